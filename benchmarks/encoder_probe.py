"""Which frozen offline features carry the most signal? A linear probe over encoder, pooling and image-view variants.

For MVSA-Single and MultiOFF (the splits of ``benchmarks/quality.py``), each variant's pooled features are computed
once (saved under ``--work``) and probed by ``quality.logistic_probe``: standardized on train, a scikit-learn
logistic regression with C and class weights chosen on the validation split (MVSA-Single: macro-F1, MultiOFF:
AUROC). The choice between variants must be made on the validation columns too; the test columns are printed only
to report. Variants:

- text: ``minilm`` mean pooling (mmfuse's default for it), ``minilm`` CLS token, ``minilm`` mean and max
  concatenated, ``mpnet`` (all-mpnet-base-v2, see the README's install notes) mean pooling;
- image: ``efficientnet-lite0`` whole image stretched to 224 px (the default), centre crop, the mean over three
  views (stretched, its mirror image, centre crop: "multi-crop"), ``efficientnet-lite2`` (260 px, ``offline-large``);
- the default text + image features concatenated, and the strongest of each by validation concatenated.

::

    .venv/bin/python benchmarks/encoder_probe.py                  # about 30 minutes on 2 CPU cores; writes --out
    .venv/bin/python benchmarks/encoder_probe.py --datasets multioff --limit 64 --work /tmp/probe-smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def quality_module() -> Any:
    """``benchmarks/quality.py`` (its dataset specs, loading and metrics), imported by path."""
    spec = importlib.util.spec_from_file_location("mmfuse_quality_benchmark", HERE / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def text_variant(name: str, pooling: str) -> Callable[[list[Any]], np.ndarray]:
    from mmfuse.encoders import build_text_encoder

    encoder = build_text_encoder(name).eval()

    def encode(examples: list[Any]) -> np.ndarray:
        inputs = encoder.tokenize([e.text for e in examples])
        with torch.no_grad():
            out = encoder(inputs)
        seq, mask = out.sequence, out.mask
        if pooling == "mean":
            return out.pooled.numpy()
        if pooling == "cls":
            return seq[:, 0].numpy()
        hidden = seq.masked_fill(~mask[..., None], float("-inf")).max(dim=1).values  # meanmax
        return torch.cat([out.pooled, hidden], dim=1).numpy()

    return encode


def image_variant(name: str, views: Sequence[str]) -> Callable[[list[Any]], np.ndarray]:
    from PIL import Image

    from mmfuse.encoders import build_image_encoder

    encoders = {
        r: build_image_encoder(name, resize=r).eval() for r in {"crop" if v == "crop" else "stretch" for v in views}
    }

    def encode(examples: list[Any]) -> np.ndarray:
        images = [Image.open(e.image) for e in examples]
        pooled = []
        for view in views:
            encoder = encoders["crop" if view == "crop" else "stretch"]
            pixels = torch.stack([encoder.preprocess(im) for im in images])
            if view == "mirror":
                pixels = torch.flip(pixels, dims=[3])
            with torch.no_grad():
                pooled.append(encoder(pixels).pooled)
        return torch.stack(pooled).mean(0).numpy()

    return encode


TEXT = {
    "minilm mean (default)": ("minilm", "mean"),
    "minilm CLS": ("minilm", "cls"),
    "minilm mean+max": ("minilm", "meanmax"),
    "mpnet mean": ("mpnet", "mean"),
}
IMAGE = {
    "lite0 stretch (default)": ("efficientnet-lite0", ("stretch",)),
    "lite0 centre crop": ("efficientnet-lite0", ("crop",)),
    "lite0 multi-crop (stretch, mirror, crop)": ("efficientnet-lite0", ("stretch", "mirror", "crop")),
    "lite2 stretch": ("efficientnet-lite2", ("stretch",)),
}


def features(variant: str, data: Any, work: Path, batch: int = 32) -> dict[str, np.ndarray]:
    """Pooled features of ``variant`` by split (and ``seconds``: how long computing them took), saved once."""
    path = work / f"{data.spec.name}-{variant.split(' (')[0].replace(' ', '_').replace('+', 'p')}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    build = text_variant(*TEXT[variant]) if variant in TEXT else image_variant(*IMAGE[variant])
    start, out = time.perf_counter(), {}
    for split, examples in data.splits.items():
        out[split] = np.concatenate([build(examples[i : i + batch]) for i in range(0, len(examples), batch)])
    out["seconds"] = np.array(time.perf_counter() - start)
    np.savez(path, **out)
    print(f"  {data.spec.name}: {variant} features in {float(out['seconds']):.0f}s", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("::")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mvsa_single,multioff")
    p.add_argument("--limit", type=int, default=0, help="smoke runs: this many train examples (val/test: half)")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmfuse-encoder-probe"), help="saved features")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("docs/encoder-probe.md"), help="markdown report")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    q = quality_module()
    command = " ".join(["python benchmarks/encoder_probe.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "# Which frozen features carry the signal: a linear probe",
        "",
        f"Generated by `benchmarks/encoder_probe.py` ({time.strftime('%Y-%m-%d')}; {q.machine()}). Command:",
        "",
        f"    {command}",
        "",
        (__doc__ or "").split("::")[0].strip().split("\n\n", 1)[1].strip(),
        "",
        "`Features s`: wall time to compute that variant's features for all three splits (CPU, the threads given by "
        "`--threads`); the probes themselves take seconds.",
    ]
    for name in args.datasets.split(","):
        data = q.load_data(q.DATASETS[name], q.DATASETS_ROOT, args.limit)
        spec = data.spec
        feats = {v: features(v, data, args.work) for v in (*TEXT, *IMAGE)}
        seconds = {v: float(f.pop("seconds", np.nan)) for v, f in feats.items()}
        rows = {v: q.logistic_probe(data, f) for v, f in feats.items()}
        best_text = max(TEXT, key=lambda v: rows[v]["val_mean"][spec.select])
        best_image = max(IMAGE, key=lambda v: rows[v]["val_mean"][spec.select])
        pairs = {"text + image: defaults": (next(iter(TEXT)), next(iter(IMAGE)))}
        pairs[f"text + image: best on val ({best_text}; {best_image})"] = (best_text, best_image)
        for label, (t, i) in pairs.items():
            rows[label] = q.logistic_probe(data, {s: np.hstack([feats[t][s], feats[i][s]]) for s in data.splits})
        sel = spec.select
        scale, digits = (1, 3) if sel == "auroc" else (100, 1)
        table = [
            "",
            f"## {spec.title}",
            "",
            f"| Features | Val {sel} | Val accuracy | Test {sel} | Test accuracy | Chosen on val | Features s |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, r in rows.items():
            secs = f"{seconds[label]:.0f}" if label in seconds else ""
            val, test = r["val_mean"], r["test_mean"]
            table.append(
                f"| {label} | {val[sel] * scale:.{digits}f} | {val['accuracy'] * 100:.1f} | "
                f"{test[sel] * scale:.{digits}f} | {test['accuracy'] * 100:.1f} | {r['chosen']} | {secs} |"
            )
        print("\n".join(table), flush=True)
        lines += table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
