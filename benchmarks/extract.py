"""Feature extraction on MVSA-Single: raw torch forward, raw onnxruntime forward and mmfuse's full cache fill.

For each modality (EfficientNet-Lite0 images, MiniLM texts), in one run:

- (a) ``torch``: the encoder's forward on batches decoded/tokenized beforehand, under ``torch.inference_mode``,
  once with glibc's default heap (what mmfuse did before ``retained_heap``) and once inside ``retained_heap``;
- (b) ``onnxruntime``: the same batches through :class:`~mmfuse.encoders.runtime.OnnxEncoder` (its one-off export
  is timed apart);
- (c) ``cache fill``: ``FeatureCache.get`` on a fresh cache folder (decoding/tokenizing, encoding on the default
  ``auto`` backend, hashing, shard writes); the ONNX export from (b) is put in the folder's ``onnx/`` first, as a
  second dataset on the same cache finds it; the fill checks it against torch (and records the check beside it);
- (c') the same fill as a later process makes it: features cleared, a new encoder object, the export and the
  record of (c)'s check in ``onnx/`` (it loads the export without running torch).

Each row gives inputs/s (wall clock), inputs per CPU-second (user + sys: the figure to compare when other processes
share the machine), user and sys CPU seconds of this process and its DataLoader workers
(``resource.getrusage``; the workers' share and the minor page faults apart), and for (c) the bytes written per
example. Reports numbers; asserts nothing. Run::

    python benchmarks/extract.py [--root ../shared/datasets/mvsa_single] [--limit 512] [--modality image]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmfuse.cache.location import onnx_dir
from mmfuse.cache.source import FeatureCache
from mmfuse.data import DataConfig, load_splits
from mmfuse.data.images import open_image
from mmfuse.encoders import build_image_encoder, build_text_encoder
from mmfuse.encoders.base import Encoder
from mmfuse.encoders.runtime import OnnxEncoder, available_cores, retained_heap
from mmfuse.features.compute import check_record_file, onnx_file

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvsa_single"


def _usage() -> tuple[float, float, float, float, int]:
    """user, sys of this process; user, sys of its ended children (DataLoader workers); minor page faults of both."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime, s.ru_stime, c.ru_utime, c.ru_stime, s.ru_minflt + c.ru_minflt


def timed(fn: Callable[[], Any]) -> tuple[float, float, float, str]:
    """(wall, user, sys) seconds of ``fn()``, this process and its workers together, and a note of the workers'
    share and the page faults (where sys time goes: every fault is a fresh page the kernel maps and zeroes)."""
    u0 = _usage()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    d = [b - a for a, b in zip(u0, _usage(), strict=True)]
    note = f"  faults {d[4] / 1e3:.0f}k" + (f" (workers: user {d[2]:.1f} s, sys {d[3]:.1f} s)" if d[2] + d[3] else "")
    return wall, d[0] + d[2], d[1] + d[3], note


def row(label: str, n: int, unit: str, wall: float, user: float, sys_: float, *extra: str) -> None:
    """One line; ``per CPU-s`` (inputs per second of user + sys time) is the figure to compare on a busy machine,
    where wall-clock rates measure the other processes too."""
    print(
        f"  {label:<31} {n / wall:7.1f} {unit}/s {n / max(user + sys_, 1e-9):7.1f} {unit}/CPU-s  wall {wall:6.1f} s  "
        f"user {user:6.1f} s  sys {sys_:5.1f} s (sys/user {sys_ / max(user, 1e-9):4.0%}){''.join(extra)}"
    )


def _encoder(modality: str) -> Encoder:
    encoder = build_image_encoder("efficientnet-lite0") if modality == "image" else build_text_encoder("minilm")
    encoder.freeze()
    return encoder.eval()


def bench(modality: str, examples: list, batch_size: int, workers: int | None, rows: str = "abc") -> None:
    encoder = _encoder(modality)
    n = len(examples)
    unit = "img" if modality == "image" else "sent"
    if modality == "image":
        pixels = torch.stack([encoder.preprocess(open_image(e.image)) for e in examples])
        batches: list[Any] = list(pixels.split(batch_size))
    else:
        texts = [e.text for e in examples]
        batches = [encoder.tokenize(texts[i : i + batch_size]) for i in range(0, n, batch_size)]
    print(f"{modality}: {encoder.name}, {n} examples, batch {batch_size}")

    def run_all(fn: Callable[[Any], Any]) -> None:
        with torch.inference_mode():
            for b in batches:
                fn(b)

    if "a" in rows:
        with torch.inference_mode():
            encoder(batches[0])  # warm-up
        row("(a) torch, glibc default heap", n, unit, *timed(lambda: run_all(encoder)))
        with retained_heap():
            row("(a) torch, retained_heap", n, unit, *timed(lambda: run_all(encoder)))
    tmp = Path(tempfile.mkdtemp(prefix="mmfuse-extract-bench-"))
    try:
        example = batches[0][:2] if modality == "image" else {k: v[:2] for k, v in batches[0].items()}
        start = time.perf_counter()
        runner = OnnxEncoder(encoder, example, tmp / "export.onnx")
        export_s = time.perf_counter() - start
        runner(batches[0])  # warm-up
        if "b" in rows:
            wall, user, sys_, note = timed(lambda: run_all(runner))
            row("(b) onnxruntime", n, unit, wall, user, sys_, f"  (export once: {export_s:.1f} s)", note)
        if "c" not in rows:
            return
        cache_root = tmp / "cache"
        seeded = onnx_file(encoder, onnx_dir(cache_root))
        seeded.parent.mkdir(parents=True)
        shutil.copy(runner.path, seeded)
        cache = FeatureCache(cache_root, encode_workers=workers)
        wall, user, sys_, note = timed(lambda: cache.get(encoder, examples, need_sequence=False, batch_size=batch_size))
        written = sum(p.stat().st_size for p in (cache_root / "features").rglob("*") if p.is_file())
        row("(c) mmfuse cache fill (auto)", n, unit, wall, user, sys_, f"  {written / n / 1024:.1f} KB/example", note)
        if not check_record_file(seeded).is_file():
            return  # (c) ran torch: nothing was checked and recorded
        # (c') what a later process pays: the features cleared, a new encoder object (nothing chosen in this process
        # for it), the export and the record of (c)'s check against torch in onnx/
        shutil.rmtree(cache_root / "features")
        later = _encoder(modality)
        cache = FeatureCache(cache_root, encode_workers=workers)
        wall, user, sys_, note = timed(lambda: cache.get(later, examples, need_sequence=False, batch_size=batch_size))
        row("(c') cache fill, export checked", n, unit, wall, user, sys_, note)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="MVSA-Single folder")
    parser.add_argument("--limit", type=int, default=None, help="first N examples (train, dev, test in order)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of (c) (default: the cache's)")
    parser.add_argument("--modality", choices=["image", "text", "both"], default="both")
    parser.add_argument("--rows", default="abc", help="which of the rows (a), (b), (c) to measure, e.g. bc")
    args = parser.parse_args()
    splits = load_splits(DataConfig(root=args.root, preset="mvsa_single"))
    examples = [e for s in splits.values() for e in s.examples][: args.limit]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({available_cores()} available), load average "
        f"{os.getloadavg()[0]:.1f}, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )
    for modality in ("image", "text") if args.modality == "both" else (args.modality,):
        bench(modality, examples, args.batch_size, args.workers, args.rows)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
