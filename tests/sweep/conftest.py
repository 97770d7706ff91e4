"""Fixtures of the sweep tests: a small synthetic dataset and a base config with tiny random encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from mmfuse.data import make_synthetic


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 synthetic examples (Hateful Memes layout): 56 train, 12 dev, 12 test."""
    return make_synthetic(tmp_path_factory.mktemp("synth") / "data", n=80, seed=0)


@pytest.fixture(scope="session")
def base_config(synth_root: Path) -> dict[str, Any]:
    """A base training config: tiny BERT + tiny CLIP vision, concat head, 2 epochs."""
    return {
        "data": {"root": str(synth_root), "preset": "hateful_memes"},
        "model": {
            "text_encoder": str(tiny_bert_dir()),
            "image_encoder": str(tiny_clip_vision_dir()),
            "head": {"name": "concat", "params": {"hidden": 32}},
        },
        "train": {"epochs": 2, "batch_size": 16},
    }
