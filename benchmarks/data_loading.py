"""Images/s of MultimodalDataset + DataLoader on MVSA-Single, with 0 and 2 worker processes.

Each item decodes its JPEG (open by content, RGB conversion), resizes it to 224x224 and normalizes it
EfficientNet-style, ``(x - 127) / 128``; batches are collated by ``collate_examples``. Reports numbers; asserts
nothing. Run::

    .venv/bin/python benchmarks/data_loading.py [--root ../shared/datasets/mvsa_single] [--passes 2]

``--make-loader`` measures mmfuse's own training/evaluation loader instead: ``make_loader`` with EfficientNet-Lite0's
preprocessing (224 px) and ``--workers`` worker processes, each batch turned into model inputs by ``InputMaker`` (the
path every consumer of the loader takes): images/s over the passes (worker start-up included), and the CPU seconds
of this process and its reaped workers (``getrusage``), so that runs on a shared machine compare per CPU-second.
It runs against any mmfuse ``src`` (``PYTHONPATH=old/src``), so old and new code can be timed back to back::

    PYTHONPATH=src .venv/bin/python benchmarks/data_loading.py --make-loader --workers 2 --passes 3
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import platform
import resource
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


def measure_make_loader(examples: list, workers: int, batch_size: int, passes: int) -> dict[str, float]:
    """images/s, CPU seconds (user/sys of this process and of its workers) and the pixel dtype of ``make_loader``
    batches turned into model inputs by ``InputMaker``, with EfficientNet-Lite0's preprocessing at 224 px."""
    from types import SimpleNamespace

    from mmfuse.encoders._preprocess import LitePreprocessor
    from mmfuse.features import InputMaker, Tables, make_loader
    from mmfuse.features.plan import FeaturePlan

    plan = FeaturePlan(text=None, image="raw")
    encoder = SimpleNamespace(preprocess=LitePreprocessor(image_size=224))  # make_loader reads only .preprocess
    takes_encoder = "image_encoder" in inspect.signature(InputMaker).parameters  # code before the uint8 transport
    maker = InputMaker(plan, Tables(), None, encoder) if takes_encoder else InputMaker(plan, Tables(), None)
    gc.collect()
    self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    load0, start = os.getloadavg()[0], time.perf_counter()
    loader = make_loader(
        examples, label_map=None, plan=plan, image_encoder=encoder, batch_size=batch_size, num_workers=workers
    )
    seen, moved, checksum = 0, set(), 0.0
    for _ in range(passes):
        for batch in loader:
            moved.add(str(batch["pixel_values"].dtype).replace("torch.", ""))
            pixels = maker(batch, "cpu").pixel_values
            checksum += float(pixels[:, :, ::37, ::37].sum())  # touch the result, as a model would read it
            seen += len(batch["ids"])
    del loader, batch, pixels
    gc.collect()  # the persistent workers exit and are reaped: their CPU time lands in RUSAGE_CHILDREN
    seconds = time.perf_counter() - start
    self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {
        "main_user": self1.ru_utime - self0.ru_utime,
        "main_sys": self1.ru_stime - self0.ru_stime,
        "workers_user": kids1.ru_utime - kids0.ru_utime,
        "workers_sys": kids1.ru_stime - kids0.ru_stime,
    }
    total_cpu = sum(cpu.values())
    return {
        "images": seen, "seconds": seconds, "images_per_s": seen / seconds, "cpu_s": total_cpu,
        "images_per_cpu_s": seen / total_cpu, **cpu, "load_start": load0, "load_end": os.getloadavg()[0],
        "moved": "/".join(sorted(moved)), "faults": self1.ru_minflt - self0.ru_minflt, "checksum": checksum,
    }  # fmt: skip


def report_make_loader(examples: list, args: argparse.Namespace) -> None:
    import mmfuse

    print(f"mmfuse from {Path(mmfuse.__file__).parent}; {len(examples)} examples, batch {args.batch_size}")
    for workers in (int(w) for w in args.workers.split(",")):
        r = measure_make_loader(examples, workers, args.batch_size, args.passes)
        print(
            f"make_loader + InputMaker, num_workers={workers}, pixels moved as {r['moved']}: {r['images']} images in "
            f"{r['seconds']:.2f} s = {r['images_per_s']:.1f} images/s; CPU {r['cpu_s']:.2f} s "
            f"(main user {r['main_user']:.2f} / sys {r['main_sys']:.2f}, workers user {r['workers_user']:.2f} / "
            f"sys {r['workers_sys']:.2f}) = {r['images_per_cpu_s']:.1f} images/CPU-s; main page faults "
            f"{r['faults']}; load average {r['load_start']:.2f} -> {r['load_end']:.2f}; checksum {r['checksum']:.6e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="MVSA-Single folder")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--passes", type=int, default=2, help="passes over the split per setting")
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--make-loader", action="store_true", help="time mmfuse's make_loader + InputMaker")
    args = parser.parse_args()

    start = time.perf_counter()
    splits = load_splits(DataConfig(root=args.root, preset="mvsa_single"))
    load_seconds = time.perf_counter() - start
    split = splits[args.split]
    if args.make_loader:
        report_make_loader(list(split.examples), args)
        return
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
