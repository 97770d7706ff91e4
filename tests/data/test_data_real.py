"""The real datasets in ../shared/datasets load through their presets, with each known defect reported.

Known defects (found by inspecting the files, asserted here so a loader change cannot hide them):
- MultiOFF: Validation lists KbTk7Rq.png, which is not in `Labelled Images/`; 453 of the `.png` images are JPEG
  data; the negative class is spelled `Non-offensiv`; 3 sentences hold U+FFFD (text mangled upstream);
  images come as RGB, RGBA and palette PNGs and JPEGs.
- MVSA-Single: 576 of the `data/{id}.txt` files are GBK-encoded, not UTF-8 (the split files' `text` field holds
  mojibake for them, which is why the preset reads the .txt files); 11 images of val/test are byte-identical to
  images of an earlier split (the same tweet posted twice: a leak); 4 images repeat within train; val holds one
  tweet twice with conflicting labels (ids 2106 positive, 202 negative).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data import (
    DataConfig,
    ImageNotFoundError,
    LabelMap,
    MultimodalDataset,
    collate_examples,
    load_splits,
)


@pytest.fixture(scope="module")
def multioff(shared_datasets: Path) -> dict:
    return load_splits(DataConfig(root=shared_datasets / "multioff", preset="multioff"))


@pytest.fixture(scope="module")
def mvsa(shared_datasets: Path) -> dict:
    return load_splits(DataConfig(root=shared_datasets / "mvsa_single", preset="mvsa_single"))


def test_multioff_loads_and_reports_its_defects(multioff: dict) -> None:
    assert {n: (s.report.rows, len(s)) for n, s in multioff.items()} == {
        "train": (445, 445),
        "val": (149, 148),
        "test": (149, 149),
    }
    (missing,) = multioff["val"].report.skipped_images
    assert missing.id == "KbTk7Rq.png" and missing.reason == "file not found"
    assert missing.path == "Labelled Images/KbTk7Rq.png"
    mismatches = sum(len(s.report.extension_mismatches) for s in multioff.values())
    assert mismatches == 453
    assert all(
        p.reason == "JPEG content in a .png file" for s in multioff.values() for p in s.report.extension_mismatches
    )
    mangled = {p.id for s in multioff.values() for p in s.report.replacement_chars}
    assert mangled == {"jQsh9vC.png", "PjZa9M1.png", "CW7tNBQU0AIADyq.jpg"}
    for split in multioff.values():
        assert set(split.report.label_counts) == {"offensive", "non-offensive"}
        assert not split.report.bad_rows and not split.report.duplicate_ids and split.report.usable
    assert multioff["train"].report.label_counts == {"non-offensive": 258, "offensive": 187}


def test_multioff_missing_image_with_error_policy_names_it(shared_datasets: Path) -> None:
    cfg = DataConfig(root=shared_datasets / "multioff", preset="multioff", on_missing_image="error")
    with pytest.raises(ImageNotFoundError, match=r"KbTk7Rq\.png.*Validation_meme_dataset\.csv"):
        load_splits(cfg)


def test_mvsa_loads_with_original_text_and_counts_fallbacks(mvsa: dict) -> None:
    assert {n: len(s) for n, s in mvsa.items()} == {"train": 1555, "val": 518, "test": 519}
    fallbacks = [p for s in mvsa.values() for p in s.report.fallback_texts]
    assert len(fallbacks) == 576 and {p.reason for p in fallbacks} == {"gb18030"}
    by_id = {e.id: e for s in mvsa.values() for e in s.examples}
    assert by_id["2905"].text == "all I need of bliss http:/…"  # GBK ellipsis; the split file has mojibake "¡\xad"
    assert not any("\ufffd" in e.text for e in by_id.values())
    assert mvsa["train"].report.label_counts == {"positive": 851, "negative": 422, "neutral": 282}
    (conflict,) = mvsa["val"].report.same_images  # the same tweet twice, labeled positive and negative
    assert conflict.id == "202" and "conflicting labels" in conflict.reason and "2106" in conflict.reason
    assert len(mvsa["train"].report.same_images) == 4
    leaks = [n for s in mvsa.values() for n in s.report.notes if "same image file as an example of" in n]
    assert [int(n.split()[0]) for n in leaks] == [3, 4, 4]  # val~train, test~train, test~val
    for split in mvsa.values():
        report = split.report
        assert report.usable and not report.skipped_images and not report.bad_rows and not report.duplicate_ids


def test_real_images_of_every_mode_become_tensors(multioff: dict) -> None:
    train = multioff["train"]
    label_map = LabelMap.from_labels(train.labels)

    def preprocess(image: Image.Image) -> torch.Tensor:  # a tiny stand-in for an encoder's preprocess
        return torch.from_numpy(np.asarray(image.resize((32, 32)), dtype=np.float32)).permute(2, 0, 1)

    dataset = MultimodalDataset(train.examples, label_map=label_map, image_preprocess=preprocess)
    batch = collate_examples([dataset[i] for i in range(0, len(dataset), 10)])
    assert batch["pixel_values"].shape[1:] == (3, 32, 32)
    assert batch["image_present"].all() and dataset.unreadable_count == 0
    assert Counter(batch["labels"].tolist()).keys() == {0, 1}


def test_check_cli_on_real_data(shared_datasets: Path) -> None:
    result = CliRunner().invoke(app, ["data", "check", str(shared_datasets / "multioff"), "--preset", "multioff"])
    assert result.exit_code == 0, result.output
    assert "KbTk7Rq.png" in result.output and "extension mismatches" in result.output
