"""Bytes per example of the feature cache on real MVSA-Single inputs, by storage setting. Reports numbers; asserts
nothing. Run::

    .venv/bin/python benchmarks/cache_size.py [--root ../shared/datasets/mvsa_single] [--examples 512]

For each setting (``cache.dtype``, ``cache.pooled_dtype``, and whether the head reads the grid / token sequence) it
fills an empty cache folder with the first ``--examples`` training examples through the public path
(:class:`mmfuse.cache.FeatureCache`, EfficientNet-Lite0 images and MiniLM-L6 texts, frozen), then reads the sizes
back with :func:`mmfuse.cache.list_cache` (what ``mmfuse cache ls`` shows). It also compares the float16 tables with
the float32 ones: the largest relative error of the values float16 holds as normal numbers (magnitude >= 2**-14),
and the largest absolute error overall.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvsa_single"

# (label, need_sequence, dtype, pooled_dtype)
SETTINGS = [
    ("pooled only (concat), float32", False, "float32", "float32"),
    ("pooled only (concat), pooled float16", False, "float32", "float16"),
    ("with grid/sequence (cross_attention), float32", True, "float32", "float32"),
    ("with grid/sequence (cross_attention), float16", True, "float16", "float32"),
    ("with grid/sequence, float16 + pooled float16", True, "float16", "float16"),
]


def fill(root: Path, encoders: dict[str, Any], examples: list, need_sequence: bool, dtype: str, pooled: str):
    from mmfuse.cache import FeatureCache, list_cache

    cache = FeatureCache(root, dtype=dtype, pooled_dtype=pooled, encode_workers=2)
    start = time.perf_counter()
    tables = {m: cache.get(enc, examples, need_sequence=need_sequence) for m, enc in encoders.items()}
    seconds = time.perf_counter() - start
    listing = {c.modality: c for c in list_cache(root)}
    sizes = {
        m: {
            "entries": listing[m].entries,
            "shard_bytes": listing[m].shard_bytes,
            "bytes_per_example": listing[m].bytes_per_example,
            "stored_as": listing[m].dtypes,
        }
        for m in encoders
    }
    return tables, sizes, seconds


def errors(fp32: Any, fp16: Any) -> dict[str, float]:
    """Largest relative error where float16 holds the value as a normal number, and largest absolute error."""
    import torch

    a, b = fp32.values, fp16.values
    normal = a.abs() >= 2.0**-14
    rel = ((a - b).abs() / a.abs().clamp_min(2.0**-14))[normal]
    return {
        "max_rel_error_normal": float(rel.max()) if rel.numel() else 0.0,
        "mean_rel_error_normal": float(rel.mean()) if rel.numel() else 0.0,
        "max_abs_error": float((a - b).abs().max()),
        "share_subnormal_or_zero": float((~normal).float().mean()),
        "pooled_equal": bool(torch.equal(fp32.pooled, fp16.pooled)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("::")[0])
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--examples", type=int, default=512, help="training examples encoded (one 512-input shard)")
    p.add_argument("--out", type=Path, default=None, help="also write the numbers here as JSON")
    args = p.parse_args()

    from mmfuse.config import EncoderConfig
    from mmfuse.data import DataConfig, load_splits
    from mmfuse.model.build import build_encoder

    examples = list(load_splits(DataConfig(root=args.root, preset="mvsa_single"))["train"].examples)[: args.examples]
    encoders = {
        "image": build_encoder("image", EncoderConfig(name="efficientnet-lite0")),
        "text": build_encoder("text", EncoderConfig(name="minilm")),
    }
    results: dict[str, Any] = {"examples": len(examples), "settings": {}}
    tables: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="mmfuse-cache-size-"))
    try:
        for i, (label, need_sequence, dtype, pooled) in enumerate(SETTINGS):
            tables[label], sizes, seconds = fill(work / str(i), encoders, examples, need_sequence, dtype, pooled)
            results["settings"][label] = {"sizes": sizes, "fill_seconds": round(seconds, 1)}
            line = ", ".join(
                f"{m} {s['bytes_per_example'] / 1024:.1f} KiB ({s['bytes_per_example']:.0f} B)/example"
                for m, s in sizes.items()
            )
            print(f"{label}: {line}  [{seconds:.0f} s]", flush=True)
        fp32, fp16 = SETTINGS[2][0], SETTINGS[3][0]
        results["float16_vs_float32"] = {m: errors(tables[fp32][m], tables[fp16][m]) for m in encoders}
        for m, e in results["float16_vs_float32"].items():
            print(f"float16 {m} sequences vs float32: {json.dumps(e)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
