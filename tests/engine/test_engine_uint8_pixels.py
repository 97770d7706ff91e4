"""Fine-tuning an image encoder with EfficientNet-Lite preprocessing: the loader sends uint8 pixels, normalised by
the input maker, and training, validation and prediction give the same numbers as the float32 preprocessing.

Compared exactly (``==`` / ``np.array_equal``), not within a tolerance: both runs feed the model the same float32
bits (``(x - 127) / 128`` is exact in float32), in one process, with the same seed, so every operation after that
is the same on any CPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _engine_support import build_fake_text, make_config
from PIL import Image
from torch import nn

import mmfuse.encoders
from mmfuse.encoders import EncoderOutput, ImageEncoder
from mmfuse.encoders._preprocess import LitePreprocessor
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.features import InputMaker

_MAKE_INPUTS = InputMaker.__call__


class _FloatOnly:
    """Lite preprocessing without its uint8 split: all of it in the workers, float32, as before the uint8 path."""

    def __init__(self, pre: LitePreprocessor) -> None:
        self.pre = pre

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.pre(image)


class _FakeLite(ImageEncoder):
    """A small trainable CNN behind EfficientNet-Lite's preprocessing (32 px)."""

    def __init__(self, name: str, split: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.dim, self.name = 16, name
        pre = LitePreprocessor(image_size=32)
        self._pre: Any = pre if split else _FloatOnly(pre)

    @property
    def preprocess(self) -> Any:  # type: ignore[override]
        return self._pre

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        f = self.conv(pixel_values).flatten(2).transpose(1, 2)
        return EncoderOutput(pooled=f.mean(1), sequence=f, mask=torch.ones(f.shape[:2], dtype=torch.bool))

    def freeze(self, trainable_top_k: int = 0) -> None:
        self.requires_grad_(False)

    def cache_identity(self) -> dict[str, Any]:
        return {"kind": "fake-lite", "name": self.name}


def _fit_and_predict(
    split: bool, splits: dict, root: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[float], list[dict[str, Any]], np.ndarray, set[torch.dtype]]:
    """(train losses, epoch records less their timings, test probabilities, pixel dtypes the input maker got) of a
    2-epoch fine-tune of the fake Lite encoder (``freeze: false``)."""
    monkeypatch.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
    monkeypatch.setattr(mmfuse.encoders, "build_image_encoder", lambda name, **_: _FakeLite(name, split), raising=False)
    seen: set[torch.dtype] = set()

    def spy(self: InputMaker, batch: dict[str, Any], device: Any) -> Any:
        if "pixel_values" in batch:
            seen.add(batch["pixel_values"].dtype)
        return _MAKE_INPUTS(self, batch, device)

    monkeypatch.setattr(InputMaker, "__call__", spy)
    config = make_config(
        root, out, model={"image_encoder": {"name": "fake-lite", "freeze": False}, "head": "concat"},
        train={"epochs": 2, "batch_size": 16, "num_workers": 0},
    )  # fmt: skip
    train, val, test = (list(splits[s].examples) for s in ("train", "val", "test"))
    broken = out / "broken.png"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a png")
    train[3] = replace(train[3], image=None)  # a missing image and an unreadable one: blanks in training
    train[5] = replace(train[5], image=broken)
    test[0] = replace(test[0], image=None)  # and one at prediction time
    clf = MultimodalClassifier(config).fit(train, val)
    proba = clf.predict_proba(test, max_missing_images=0.5)
    losses = [float(r["train_loss"]) for r in clf.history]
    records = [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_s")} for r in clf.history]
    return losses, records, np.asarray(proba), seen


def test_fine_tuning_on_uint8_pixels_gives_the_float32_numbers(
    synthetic_splits: dict, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new = _fit_and_predict(True, synthetic_splits, synthetic_root, tmp_path / "uint8", monkeypatch)
    old = _fit_and_predict(False, synthetic_splits, synthetic_root, tmp_path / "float32", monkeypatch)
    assert new[3] == {torch.uint8}  # the uint8 path really ran (training, validation and prediction batches)
    assert old[3] == {torch.float32}
    assert new[0] == old[0]  # train losses, epoch by epoch
    assert new[1] == old[1]  # every epoch's record: losses, validation metrics, learning rates, best epoch
    assert np.array_equal(new[2], old[2])
    assert len(set(new[0])) == 2  # it trained: the loss moved between epochs


def test_images_that_fail_in_the_loader_workers_are_said_each_epoch(
    synthetic_splits: dict, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each worker logs its first unreadable image only, and counted the rest for nobody to see: the trainer says
    # the count of each epoch, from the dataset's count shared with its workers
    monkeypatch.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
    monkeypatch.setattr(mmfuse.encoders, "build_image_encoder", lambda name, **_: _FakeLite(name, True), raising=False)
    config = make_config(
        synthetic_root, tmp_path, model={"image_encoder": {"name": "fake-lite", "freeze": False}, "head": "concat"},
        train={"epochs": 2, "batch_size": 16, "num_workers": 2},
    )  # fmt: skip
    train, val = (list(synthetic_splits[s].examples) for s in ("train", "val"))
    changed = tmp_path / "changed"
    changed.mkdir()
    for i, split in ((2, train), (7, train), (0, val)):  # checked when loaded, changed on disk since
        copy = changed / f"{len(list(changed.iterdir()))}.png"
        copy.write_bytes(split[i].image.read_bytes())
        split[i] = replace(split[i], image=copy)
    clf = MultimodalClassifier(config)
    for path in changed.iterdir():
        path.write_bytes(b"truncated")
    clf.fit(train, val)
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    for epoch, so_far in ((1, 2), (2, 4)):
        assert (
            f"epoch {epoch}: 2 training image(s) could not be opened (changed on disk since the data was "
            f"checked?), {so_far} so far; a blank image stood in for each" in log
        ), log
    assert "epoch 1: 1 validation image(s) could not be opened" in log and "epoch 2: 1 validation" in log
    assert len(clf.history) == 2
