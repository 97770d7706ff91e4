"""LabelMap: ordering, round trip through JSON, and the unseen-label error at prediction time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mmfuse.data import DataConfig, LabelMap, MultimodalDataset, UnseenLabelError, load_examples, load_splits


def test_classes_sorted_numeric_strings_numerically() -> None:
    assert LabelMap.from_labels(["10", "2", "1", "2", None]).classes == ["1", "2", "10"]
    assert LabelMap.from_labels(["neutral", "positive", "negative"]).classes == ["negative", "neutral", "positive"]
    assert LabelMap.from_labels(["b", "3", "a", "-1"]).classes == ["-1", "3", "a", "b"]


def test_encode_decode_and_errors() -> None:
    label_map = LabelMap.from_labels(["pos", "neg"])
    assert label_map.num_classes == len(label_map) == 2
    assert [label_map.encode(c) for c in ("neg", "pos")] == [0, 1]
    assert label_map.decode(1) == "pos"
    with pytest.raises(UnseenLabelError) as exc:
        label_map.encode("meh")
    assert "'meh'" in str(exc.value) and "'neg', 'pos'" in str(exc.value)
    assert isinstance(exc.value, ValueError)
    with pytest.raises(ValueError, match="out of range"):
        label_map.decode(2)
    with pytest.raises(ValueError, match="duplicate"):
        LabelMap(["a", "a"])
    with pytest.raises(ValueError, match="at least one class"):
        LabelMap.from_labels([None])


def test_save_load_round_trip(tmp_path: Path) -> None:
    label_map = LabelMap(["non-offensive", "offensive", "ünïcode"])
    path = label_map.save(tmp_path / "model" / "labels.json")
    loaded = LabelMap.load(path)
    assert loaded == label_map and loaded.classes == label_map.classes
    with pytest.raises(FileNotFoundError):
        LabelMap.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"labels": [1]}')
    with pytest.raises(ValueError, match="classes"):
        LabelMap.load(tmp_path / "bad.json")


def test_unseen_label_at_prediction_time(tiny_dataset: Callable, write_jsonl: Callable, tmp_path: Path) -> None:
    root = tiny_dataset(n=4)
    cfg = DataConfig(root=root, train="train.jsonl", columns={"image": "img"})
    train = load_splits(cfg)["train"]
    label_map = LabelMap.from_labels(train.labels)
    label_map.save(tmp_path / "labels.json")

    write_jsonl(root / "new.jsonl", [{"id": "n1", "text": "t", "img": "img/a0.png", "label": "c"}])
    new = load_examples("new.jsonl", cfg)
    with pytest.raises(UnseenLabelError, match=r"'c' was not seen in training; known classes: 'a', 'b'"):
        MultimodalDataset(new.examples, label_map=LabelMap.load(tmp_path / "labels.json"), image_preprocess=None)
    unlabeled = load_examples("new.jsonl", cfg, labeled=False)
    dataset = MultimodalDataset(unlabeled.examples, label_map=label_map, image_preprocess=None)
    assert dataset[0]["label"] == -1
