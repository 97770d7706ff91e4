"""Images/s of MultimodalDataset + DataLoader on MVSA-Single, with 0 and 2 worker processes.

Each item decodes its JPEG (open by content, RGB conversion), resizes it to 224x224 and normalizes it
EfficientNet-style, ``(x - 127) / 128``; batches are collated by ``collate_examples``. Reports numbers; asserts
nothing. Run::

    .venv/bin/python benchmarks/data_loading.py [--root ../shared/datasets/mvsa_single] [--passes 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmfuse.data import DataConfig, LabelMap, MultimodalDataset, collate_examples, load_splits

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvsa_single"


class ResizeNormalize:
    """224x224 bilinear resize, then ``(x - 127) / 128``, as a (3, H, W) float tensor; picklable for workers."""

    def __init__(self, size: int = 224) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resized = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        array = (np.asarray(resized, dtype=np.float32) - 127.0) / 128.0
        return torch.from_numpy(array).permute(2, 0, 1)


def measure(dataset: MultimodalDataset, workers: int, batch_size: int, passes: int) -> tuple[float, float, int]:
    """(images/s over all passes excluding worker start-up, seconds to the first batch, images seen)."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_examples,
        persistent_workers=workers > 0,
    )
    start = time.perf_counter()
    first_batch = None
    seen = 0
    timed_start = None
    for _ in range(passes):
        for batch in loader:
            if first_batch is None:
                first_batch = time.perf_counter() - start
                timed_start = time.perf_counter()  # the clock starts after the first batch: steady state only
                continue
            seen += batch["pixel_values"].shape[0]
    assert timed_start is not None and first_batch is not None
    return seen / (time.perf_counter() - timed_start), first_batch, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="MVSA-Single folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=2, help="passes over the split per setting")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    args = parser.parse_args()

    start = time.perf_counter()
    splits = load_splits(DataConfig(root=args.root, preset="mvsa_single"))
    load_seconds = time.perf_counter() - start
    split = splits[args.split]
    total = sum(len(s) for s in splits.values())
    dataset = MultimodalDataset(
        split.examples, label_map=LabelMap.from_labels(split.labels), image_preprocess=ResizeNormalize(224)
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), Python {platform.python_version()}"
    )
    print(
        f"load_splits (read rows, decode texts, fully decode and check every image): {total} examples "
        f"in {load_seconds:.2f} s ({total / load_seconds:.0f} examples/s)"
    )
    print(
        f"measured: {args.split} split, {len(dataset)} JPEGs (short side <= 256 px), open + RGB + resize 224x224 "
        f"+ (x-127)/128, batch {args.batch_size}, {args.passes} passes; the first batch (worker start-up) is "
        "timed apart and left out of images/s"
    )
    for workers in (int(w) for w in args.workers.split(",")):
        rate, first, seen = measure(dataset, workers, args.batch_size, args.passes)
        print(f"num_workers={workers}: {rate:7.1f} images/s  ({seen} images; first batch after {first:.2f} s)")
    if dataset.unreadable_count:
        print(f"unreadable images blanked: {dataset.unreadable_count}")


if __name__ == "__main__":
    main()
