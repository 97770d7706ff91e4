"""A sweep of 10 head/hyperparameter configurations on frozen MiniLM + EfficientNet-Lite0, with and without the
feature cache, on MVSA-Single. Reports numbers; asserts nothing. Run::

    .venv/bin/python benchmarks/cache_sweep.py [--root ../shared/datasets/mvsa_single] [--out bench-cache]

Each phase runs in its own Python process (a fresh memo, its own peak RSS) and writes ``<out>/<phase>.json``;
the driver prints the summary and writes ``<out>/summary.json``:

1. ``throughput``: images/s of the raw encoder forward (images decoded and preprocessed beforehand, batches of
   ``eval_batch``, ``torch.inference_mode``) against a cold cache fill of the same images in the same batches
   (hashing files, decoding in DataLoader workers, forward, writing shards). Alternated twice; best of each.
2. ``cold``: the sweep with the cache, starting from an empty cache folder (includes encoding everything once).
3. ``warm``: the same sweep again in a new process over the filled cache ("a second sweep"): time in the feature
   source (hashing, reading shards, identity) and in encoder forwards, against the wall time; peak RSS.
4. ``uncached``: ``cache.enabled=false``, the encoders run on every batch of every epoch (training and validation).
   The first ``--uncached-full`` configurations are measured for every epoch; the others for ``--uncached-epochs``
   epochs, and their remaining epochs are extrapolated (see ``extrapolate``). The output says which is which.

``early_fusion`` is not in the sweep: it runs the text transformer on joint text+image sequences every batch, so its
text side cannot be cached by design.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvsa_single"

# (name, head, head params, optimizer lr): heads and hyperparameters a first sweep would try.
CONFIGS: list[tuple[str, str, dict[str, Any], float]] = [
    ("concat-h256", "concat", {"hidden": 256}, 1e-3),
    ("concat-h512-d0.3", "concat", {"hidden": 512, "dropout": 0.3}, 3e-4),
    ("cross_attention-d256", "cross_attention", {}, 1e-3),
    ("cross_attention-d128-h2", "cross_attention", {"dim": 128, "num_heads": 2}, 3e-4),
    ("align-p256", "align", {}, 1e-3),
    ("align-p128", "align", {"proj_dim": 128}, 3e-4),
    ("cross-p32", "cross", {}, 1e-3),
    ("cross-p64-d0.3", "cross", {"proj_dim": 64, "dropout": 0.3}, 3e-4),
    ("image_only", "image_only", {}, 1e-3),
    ("text_only", "text_only", {}, 1e-3),
]


def marks_epoch(marks: list[float]):
    """An epoch callback that records the time each epoch ends."""
    return lambda _record: marks.append(time.perf_counter())


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _splits(args: argparse.Namespace) -> tuple[list, list]:
    from mmfuse.data import DataConfig, load_splits

    splits = load_splits(DataConfig(root=args.root, preset="mvsa_single"))
    train, val = splits["train"].examples, splits["val"].examples
    if args.limit:
        train, val = train[: args.limit], val[: max(args.limit // 3, 8)]
    return list(train), list(val)


# --------------------------------------------------------------------------------------------------- phases


def phase_throughput(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from mmfuse.cache import FeatureCache
    from mmfuse.data import MultimodalDataset, collate_examples
    from mmfuse.encoders import build_image_encoder

    train, _ = _splits(args)
    examples = train[: args.throughput_images]
    encoder = build_image_encoder("efficientnet-lite0")
    encoder.freeze()
    encoder.eval()
    dataset = MultimodalDataset(examples, label_map=None, image_preprocess=encoder.preprocess)
    batches = [b["pixel_values"] for b in DataLoader(dataset, batch_size=args.eval_batch, collate_fn=collate_examples)]

    def raw() -> float:
        with torch.inference_mode():
            encoder(batches[0][:2])  # warm-up
            start = time.perf_counter()
            for pixels in batches:
                encoder(pixels)
            return len(examples) / (time.perf_counter() - start)

    def fill(i: int) -> tuple[float, dict[str, Any]]:
        folder = Path(args.out) / f"throughput-cache-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        cache = FeatureCache(folder)
        start = time.perf_counter()
        cache.get(encoder, examples, need_sequence=True, batch_size=args.eval_batch, num_workers=args.workers)
        rate = len(examples) / (time.perf_counter() - start)
        shutil.rmtree(folder, ignore_errors=True)
        return rate, cache.stats.as_dict()

    raws, fills, stats = [], [], []
    for i in range(2):
        raws.append(raw())
        rate, st = fill(i)
        fills.append(rate)
        stats.append(st)
    return {
        "images": len(examples),
        "batch_size": args.eval_batch,
        "workers": args.workers,
        "raw_forward_images_per_s": raws,
        "cache_fill_images_per_s": fills,
        "fill_stats": stats,
        "ratio_best": max(fills) / max(raws),
    }


def phase_sweep(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    from mmfuse.cache import FeatureCache
    from mmfuse.config import CacheConfig, config_from
    from mmfuse.engine.classifier import MultimodalClassifier

    train, val = _splits(args)
    cached = mode != "uncached"
    # as a sweep over these heads stores: with every input the grids and sequences cross_attention reads (so each
    # input is encoded once), in the config's default dtype
    source = FeatureCache(Path(args.out) / "cache", store_sequences=True, dtype=CacheConfig().dtype)
    records = []
    configs = CONFIGS[: args.configs]
    for i, (name, head, params, lr) in enumerate(configs):
        full = cached or i < args.uncached_full
        epochs = args.epochs if full else min(args.uncached_epochs, args.epochs)
        cfg = config_from(
            head=head,
            text_encoder="minilm",
            image_encoder="efficientnet-lite0",
            epochs=epochs,
            batch_size=args.batch_size,
            lr=lr,
            **{
                "model.head.params": params,
                "cache.enabled": cached,
                "train.num_workers": args.workers,
                "train.eval_batch_size": args.eval_batch,
                "train.device": "cpu",
                "run.out_dir": str(Path(args.out) / "runs" / mode),
                "run.name": f"{i:02d}-{name}",
                "run.quiet": True,
                "run.overwrite": True,
            },
        )
        gc.collect()
        marks: list[float] = []
        feature_s, encode_s = source.stats.seconds, source.stats.encode_seconds
        cpu0, start = _cpu_seconds(), time.perf_counter()
        clf = MultimodalClassifier(cfg, source=source)
        clf.fit(train, val, callbacks=[marks_epoch(marks)])
        wall = time.perf_counter() - start
        history = clf.history
        del clf
        gc.collect()  # joins the loaders' workers, so their CPU time is counted
        cpu = _cpu_seconds() - cpu0
        ends = [start, *marks]
        records.append(
            {
                "name": name,
                "head": head,
                "params": params,
                "lr": lr,
                "epochs_run": epochs,
                "epochs_target": args.epochs,
                "measured_fully": epochs == args.epochs,
                "wall_s": wall,
                "cpu_s": cpu,
                "epoch_wall_s": [b - a for a, b in itertools.pairwise(ends)],
                "train_loop_s": [r["seconds"] for r in history],
                "feature_source_s": source.stats.seconds - feature_s,
                "encoder_forward_s": source.stats.encode_seconds - encode_s,
                "val_macro_f1": [r["val"].get("macro_f1") for r in history],
                "val_accuracy": [r["val"].get("accuracy") for r in history],
            }
        )
        print(
            f"[{mode}] {i + 1}/{len(configs)} {name}: {epochs} epoch(s) in {wall:.1f} s "
            f"(feature source {records[-1]['feature_source_s']:.1f} s), val macro-F1 "
            f"{max(f for f in records[-1]['val_macro_f1'] if f is not None):.3f}",
            flush=True,
        )
    return {
        "mode": mode,
        "train": len(train),
        "val": len(val),
        "configs": records,
        "cache_stats": source.stats.as_dict(),
        "peak_rss_mib": _peak_rss_mib(),
    }


# --------------------------------------------------------------------------------------------------- summary


def extrapolate(records: list[dict[str, Any]], epochs: int) -> tuple[list[float], float, str]:
    """Uncached wall time per configuration at ``epochs`` epochs, and how it was obtained.

    A configuration measured for every epoch counts as measured. One measured for k < ``epochs`` epochs costs, for
    each missing epoch, its last measured epoch minus the one-off set-up that epoch 1 carries (model build,
    loaders). The set-up is read off the time outside the training loop: epoch 1's (set-up + validation) of the
    partly measured configurations against the later epochs' (validation only) of the fully measured ones, medians
    of both. Comparing non-training time with non-training time keeps a change of machine load between epochs (which
    moves the training loop most) out of the estimate.
    """
    full = [r for r in records if r["measured_fully"]]
    partial = [r for r in records if not r["measured_fully"]]
    setup = 0.0
    later = [w - t for r in full for w, t in zip(r["epoch_wall_s"][1:], r["train_loop_s"][1:], strict=True)]
    if later and partial:
        first = [r["epoch_wall_s"][0] - r["train_loop_s"][0] for r in partial]
        setup = max(statistics.median(first) - statistics.median(later), 0.0)
    walls = []
    for r in records:
        if r["measured_fully"]:
            walls.append(r["wall_s"])
        else:
            per_epoch = r["epoch_wall_s"][-1] - (setup if r["epochs_run"] == 1 else 0.0)
            walls.append(r["wall_s"] + (epochs - r["epochs_run"]) * per_epoch)
    how = (
        f"{len(full)} configuration(s) measured for all {epochs} epochs; {len(partial)} measured for "
        f"{min((r['epochs_run'] for r in records), default=epochs)} epoch(s) and extrapolated (set-up estimate "
        f"{setup:.1f} s, from the time outside the training loop)"
    )
    return walls, setup, how


def summarize(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    phases = {p: json.loads((out / f"{p}.json").read_text()) for p in ("throughput", "cold", "warm", "uncached")
              if (out / f"{p}.json").is_file()}  # fmt: skip
    s: dict[str, Any] = {"machine": _machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    if "throughput" in phases:
        t = phases["throughput"]
        s["throughput"] = {
            "raw_forward_images_per_s": max(t["raw_forward_images_per_s"]),
            "cache_fill_images_per_s": max(t["cache_fill_images_per_s"]),
            "fill_over_raw": t["ratio_best"],
            "images": t["images"],
        }
    for mode in ("cold", "warm"):
        if mode in phases:
            p = phases[mode]
            wall = sum(r["wall_s"] for r in p["configs"])
            s[mode] = {
                "wall_s": wall,
                "cpu_s": sum(r["cpu_s"] for r in p["configs"]),
                "feature_source_s": sum(r["feature_source_s"] for r in p["configs"]),
                "encoder_forward_s": sum(r["encoder_forward_s"] for r in p["configs"]),
                "feature_source_share": sum(r["feature_source_s"] for r in p["configs"]) / wall,
                "encoder_forward_share": sum(r["encoder_forward_s"] for r in p["configs"]) / wall,
                "peak_rss_mib": p["peak_rss_mib"],
            }
    if "uncached" in phases:
        p = phases["uncached"]
        walls, setup, how = extrapolate(p["configs"], args.epochs)
        measured_wall = sum(r["wall_s"] for r in p["configs"])
        s["uncached"] = {
            "wall_s_estimated": sum(walls),
            "wall_s_measured_part": measured_wall,
            "cpu_s_measured_part": sum(r["cpu_s"] for r in p["configs"]),
            "per_config_wall_s": dict(zip([r["name"] for r in p["configs"]], walls, strict=True)),
            "how": how,
            "check": _extrapolation_check(p["configs"], setup, args.epochs),
        }
        for mode in ("cold", "warm"):
            if mode in s:
                s[f"speedup_{mode}"] = sum(walls) / s[mode]["wall_s"]
    return s


def _extrapolation_check(records: list[dict[str, Any]], setup: float, epochs: int) -> str:
    """How well the 1-epoch estimate predicts the fully measured configurations."""
    lines = []
    for r in records:
        if r["measured_fully"] and epochs > 1:
            predicted = r["epoch_wall_s"][0] + (epochs - 1) * (r["epoch_wall_s"][0] - setup)
            lines.append(f"{r['name']}: measured {r['wall_s']:.0f} s, 1-epoch estimate would be {predicted:.0f} s")
    return "; ".join(lines) or "no fully measured configuration"


def _machine() -> str:
    import torch

    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"
    )


def report(s: dict[str, Any]) -> str:
    lines = [f"machine: {s['machine']}"]
    if "throughput" in s:
        t = s["throughput"]
        lines.append(
            f"encoding throughput, EfficientNet-Lite0 grid, {t['images']} images: raw forward "
            f"{t['raw_forward_images_per_s']:.1f} img/s, cold cache fill {t['cache_fill_images_per_s']:.1f} img/s "
            f"= {t['fill_over_raw']:.1%} of raw"
        )
    for mode, label in (("cold", "sweep with cache, cold (encodes once)"), ("warm", "second sweep, warm cache")):
        if mode in s:
            m = s[mode]
            lines.append(
                f"{label}: {m['wall_s']:.1f} s wall, {m['cpu_s']:.1f} s CPU; "
                f"feature source {m['feature_source_s']:.1f} s "
                f"({m['feature_source_share']:.1%}), encoder forwards {m['encoder_forward_s']:.1f} s "
                f"({m['encoder_forward_share']:.1%}); peak RSS {m['peak_rss_mib']:.0f} MiB"
            )
    if "uncached" in s:
        u = s["uncached"]
        lines.append(
            f"sweep without cache (re-encoding every epoch): {u['wall_s_estimated']:.0f} s wall "
            f"({u['how']}; measured part {u['wall_s_measured_part']:.0f} s wall, {u['cpu_s_measured_part']:.0f} s CPU)"
        )
        lines.append(f"extrapolation check: {u['check']}")
        for mode in ("cold", "warm"):
            if f"speedup_{mode}" in s:
                lines.append(f"speedup, {mode} cache vs no cache: {s[f'speedup_{mode}']:.1f}x")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="MVSA-Single folder")
    parser.add_argument("--out", type=Path, default=Path("bench-cache"), help="work folder (cache, runs, JSON)")
    parser.add_argument("--phases", default="throughput,cold,warm,uncached")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--configs", type=int, default=len(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    parser.add_argument("--uncached-full", type=int, default=1, help="uncached configs measured for every epoch")
    parser.add_argument("--uncached-epochs", type=int, default=1, help="epochs measured for the other uncached ones")
    parser.add_argument("--throughput-images", type=int, default=256)
    parser.add_argument("--limit", type=int, default=0, help="use only this many train examples (smoke runs)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.phase:  # child process: one phase
        result = phase_throughput(args) if args.phase == "throughput" else phase_sweep(args, args.phase)
        result["cpu_s_process"] = _cpu_seconds()
        (args.out / f"{args.phase}.json").write_text(json.dumps(result, indent=1))
        return

    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase == "cold":
            shutil.rmtree(args.out / "cache", ignore_errors=True)
        print(f"--- phase {phase}", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--phase", phase], check=True)
        print(f"--- phase {phase} done in {time.perf_counter() - start:.0f} s", flush=True)
    summary = summarize(args.out, args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(report(summary))


if __name__ == "__main__":
    main()
