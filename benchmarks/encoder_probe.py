"""Which frozen offline features carry the most signal? A linear probe over encoder, pooling and image-view variants.

For MVSA-Single and MultiOFF (the splits of ``benchmarks/quality.py``), each variant's pooled features are computed
once (saved under ``--work``) and probed by ``quality.logistic_probe``: standardized on train, a scikit-learn
logistic regression with C and class weights chosen on the validation split (MVSA-Single: macro-F1, MultiOFF:
AUROC). The choice between variants
must be made on the validation columns too; the test columns are printed only to report. Variants:

- text: ``minilm`` mean pooling (mmfuse's default for it), ``minilm`` CLS token, ``minilm`` mean and max
  concatenated, ``mpnet`` (all-mpnet-base-v2, extra ``offline-large``) mean pooling;
- image: ``efficientnet-lite0`` whole image stretched to 224 px (the default), centre crop, the mean over three
  views (stretched, its mirror image, centre crop: "multi-crop"), ``efficientnet-lite2`` (260 px, ``offline-large``);
- the default text + image features concatenated, and the strongest of each by validation concatenated.

::

    .venv/bin/python benchmarks/encoder_probe.py                  # about 20 minutes on 2 CPU cores
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
    path = work / f"{data.spec.name}-{variant.split(' (')[0].replace(' ', '_').replace('+', 'p')}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    build = text_variant(*TEXT[variant]) if variant in TEXT else image_variant(*IMAGE[variant])
    start, out = time.perf_counter(), {}
    for split, examples in data.splits.items():
        out[split] = np.concatenate([build(examples[i : i + batch]) for i in range(0, len(examples), batch)])
    np.savez(path, **out)
    print(f"  {data.spec.name}: {variant} features in {time.perf_counter() - start:.0f}s", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("::")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="mvsa_single,multioff")
    p.add_argument("--limit", type=int, default=0, help="smoke runs: this many train examples (val/test: half)")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmfuse-encoder-probe"), help="saved features")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    q = quality_module()
    for name in args.datasets.split(","):
        data = q.load_data(q.DATASETS[name], q.DATASETS_ROOT, args.limit)
        spec = data.spec
        feats = {v: features(v, data, args.work) for v in (*TEXT, *IMAGE)}
        rows = {v: q.logistic_probe(data, f) for v, f in feats.items()}
        best_text = max(TEXT, key=lambda v: rows[v]["val_mean"][spec.select])
        best_image = max(IMAGE, key=lambda v: rows[v]["val_mean"][spec.select])
        pairs = {"text + image: defaults": (next(iter(TEXT)), next(iter(IMAGE)))}
        pairs[f"text + image: best on val ({best_text}; {best_image})"] = (best_text, best_image)
        for label, (t, i) in pairs.items():
            rows[label] = q.logistic_probe(data, {s: np.hstack([feats[t][s], feats[i][s]]) for s in data.splits})
        sel = spec.select
        print(f"\n{spec.title}: logistic regression on frozen pooled features; choices on val {sel}")
        print(f"| Features | Val {sel} | Val accuracy | Test {sel} | Test accuracy | Chosen on val |")
        print("|---|---|---|---|---|---|")
        for label, r in rows.items():
            scale = 1 if sel == "auroc" else 100
            digits = 3 if sel == "auroc" else 1
            print(
                f"| {label} | {r['val_mean'][sel] * scale:.{digits}f} | {r['val_mean']['accuracy'] * 100:.1f} | "
                f"{r['test_mean'][sel] * scale:.{digits}f} | {r['test_mean']['accuracy'] * 100:.1f} | {r['chosen']} |"
            )


if __name__ == "__main__":
    main()
