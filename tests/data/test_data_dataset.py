"""MultimodalDataset items, collate_examples batches, and images that break after loading."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mmfuse.data import DataConfig, ImageDecodeError, LabelMap, MultimodalDataset, collate_examples, load_splits


class ResizeNormalize:
    """A picklable preprocess: resize to ``size`` and scale to [-1, 1], (3, H, W)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image.resize((self.size, self.size)), dtype=np.float32)
        return torch.from_numpy((array - 127.5) / 127.5).permute(2, 0, 1)


@pytest.fixture
def loaded(tiny_dataset: Callable) -> tuple[Path, list, LabelMap]:
    root = tiny_dataset(n=4)
    cfg = DataConfig(root=root, train="train.jsonl", columns={"image": "img"}, split={"val": 0.0})
    train = load_splits(cfg)["train"]
    return root, train.examples, LabelMap.from_labels(train.labels)


def test_items_and_batch(loaded: tuple) -> None:
    _, examples, label_map = loaded
    dataset = MultimodalDataset(examples, label_map=label_map, image_preprocess=ResizeNormalize(32))
    item = dataset[5]
    assert item["index"] == 5 and item["id"] == examples[5].id and item["text"] == examples[5].text
    assert item["pixel_values"].shape == (3, 32, 32) and item["image_present"] is True
    assert item["label"] == label_map.encode(examples[5].label)
    red = dataset[0]["pixel_values"]  # label "a" images are red
    assert red[0].mean() > 0.5 and red[2].mean() < -0.5

    batch = collate_examples([dataset[i] for i in (0, 4, 7)])
    assert batch["index"].tolist() == [0, 4, 7] and batch["index"].dtype == torch.long
    assert batch["ids"] == [examples[i].id for i in (0, 4, 7)]
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["labels"].tolist() == [0, 1, 1]
    assert batch["image_present"].dtype == torch.bool and batch["image_present"].all()


def test_text_only_items_and_no_label_map(loaded: tuple) -> None:
    _, examples, _ = loaded
    dataset = MultimodalDataset(examples, label_map=None, image_preprocess=None)
    batch = collate_examples([dataset[0], dataset[1]])
    assert "pixel_values" not in batch
    assert batch["labels"].tolist() == [-1, -1]
    assert batch["texts"] == [examples[0].text, examples[1].text]


def test_example_without_image_gets_flagged_blank(loaded: tuple) -> None:
    _, examples, label_map = loaded
    from dataclasses import replace

    blanked = [replace(examples[0], image=None), examples[1]]
    dataset = MultimodalDataset(blanked, label_map=label_map, image_preprocess=ResizeNormalize(24), image_size=(24, 24))
    batch = collate_examples([dataset[0], dataset[1]])
    assert batch["image_present"].tolist() == [False, True]
    assert torch.count_nonzero(batch["pixel_values"][0]) == 0
    assert dataset.unreadable_count == 0  # known at load time: not an unreadable image


def test_image_broken_after_loading_is_blanked_and_counted(loaded: tuple, caplog: pytest.LogCaptureFixture) -> None:
    _, examples, label_map = loaded
    examples[0].image.write_bytes(b"")  # changed on disk after the load-time check
    examples[1].image.unlink()
    dataset = MultimodalDataset(examples, label_map=label_map, image_preprocess=ResizeNormalize(16))
    with caplog.at_level(logging.WARNING, logger="mmfuse.data.dataset"):
        items = [dataset[i] for i in range(3)]
    assert [it["image_present"] for it in items] == [False, False, True]
    assert torch.count_nonzero(items[0]["pixel_values"]) == 0 and items[0]["pixel_values"].shape == (3, 16, 16)
    assert dataset.unreadable_count == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "empty file" in warnings[0].getMessage()

    strict = MultimodalDataset(
        examples, label_map=label_map, image_preprocess=ResizeNormalize(16), on_unreadable="error"
    )
    with pytest.raises(ImageDecodeError):
        strict[0]


def test_unreadable_count_survives_worker_processes(loaded: tuple) -> None:
    _, examples, label_map = loaded
    for example in examples[:3]:
        example.image.write_bytes(b"garbage")
    dataset = MultimodalDataset(examples, label_map=label_map, image_preprocess=ResizeNormalize(16))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_examples)
    present = torch.cat([batch["image_present"] for batch in loader])
    assert present.tolist() == [False] * 3 + [True] * (len(examples) - 3)
    assert dataset.unreadable_count == 3


def test_dataset_copies_and_pickles(loaded: tuple) -> None:
    _, examples, label_map = loaded
    examples[0].image.write_bytes(b"")
    dataset = MultimodalDataset(examples, label_map=label_map, image_preprocess=ResizeNormalize(8))
    dataset[0]
    clone = copy.deepcopy(dataset)
    assert clone.unreadable_count == 1 and len(clone) == len(dataset)
    clone[0]
    assert clone.unreadable_count == 2 and dataset.unreadable_count == 1


def test_collate_refuses_empty_and_mixed_batches() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate_examples([])
    item = {"index": 0, "id": "a", "text": "", "image_present": True, "label": 0}
    with pytest.raises(ValueError, match="all or none"):
        collate_examples([{**item, "pixel_values": torch.zeros(3, 2, 2)}, item])


def test_bad_on_unreadable_value() -> None:
    with pytest.raises(ValueError, match="'blank' or 'error'"):
        MultimodalDataset([], label_map=None, image_preprocess=None, on_unreadable="skip")
