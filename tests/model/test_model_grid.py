"""The image grid travels from the encoder to every prediction: attention maps are laid out on the ``(h, w)`` the
encoder reported, for requests and for datasets; :func:`grid_shape` is only the fallback for outputs without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import tiny_text_encoder
from _tiny_vision import tiny_tall_grid_dir
from mmfuse.data import DataConfig, load_splits, make_synthetic
from mmfuse.encoders import build_image_encoder
from mmfuse.fusion import build_head
from mmfuse.model import TorchPredictor
from mmfuse.model.prediction import attention_grid, grid_shape


def test_attention_grid_uses_the_reported_grid_and_refuses_a_wrong_one():
    att = np.random.default_rng(0).random((2, 3, 16))
    assert attention_grid(att).shape == (2, 4, 4)  # no grid: guessed (4×4 for 16 regions of a square image)
    laid = attention_grid(att, grid=(8, 2))
    assert laid.shape == (2, 8, 2)
    np.testing.assert_allclose(laid.reshape(2, 16), attention_grid(att).reshape(2, 16))  # same weights, other shape
    with pytest.raises(ValueError, match="3×5 has 15 cells, but the attention covers 16 regions"):
        attention_grid(att, grid=(3, 5))
    assert grid_shape(16) == (4, 4)  # what a guess would have drawn


@pytest.fixture(scope="module")
def tall_predictor() -> TorchPredictor:
    torch.manual_seed(0)
    image_encoder = build_image_encoder(str(tiny_tall_grid_dir()))
    head = build_head("cross_attention", text_encoder=tiny_text_encoder(), image_encoder=image_encoder, num_classes=2)
    return TorchPredictor(head.eval(), classes=["benign", "hateful"])


def test_request_predictions_carry_the_encoders_grid(tall_predictor: TorchPredictor):
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (60, 30), (20, 30, 230))]
    pixels = [tall_predictor.prepare_image(im) for im in images]
    for p in tall_predictor.predict(["a cat", "the dog is happy"], pixels):
        assert p.attention.shape == (8, 2)  # the guess for 16 regions of a 32×32 input would be 4×4
        assert p.attention.sum() == pytest.approx(1.0)
        assert p.to_dict()["attention"]["grid"] == [8, 2]


def test_dataset_predictions_carry_the_encoders_grid(tall_predictor, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(tmp_path / "cache"))
    root = make_synthetic(tmp_path / "synth", n=40, seed=0, image_size=32)
    examples = list(load_splits(DataConfig(root=root, preset="hateful_memes"))["test"].examples)
    out, _ = tall_predictor.run_examples(examples, details=True)
    assert out.grid == (8, 2)
    predictions = tall_predictor.predictions_of(out)
    assert len(predictions) == len(examples)
    assert {p.attention.shape for p in predictions} == {(8, 2)}
