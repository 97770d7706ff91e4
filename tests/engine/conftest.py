"""Fixtures of the engine tests: a small synthetic dataset and fast fake encoders behind the builder names."""

from __future__ import annotations

from pathlib import Path

import pytest
from _engine_support import build_fake_image, build_fake_text

import mmfuse.encoders
from mmfuse.data import DataConfig, load_splits, make_synthetic


@pytest.fixture
def fake_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every encoder name builds a small deterministic fake encoder (fast, no weights to load)."""
    monkeypatch.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
    monkeypatch.setattr(mmfuse.encoders, "build_image_encoder", build_fake_image, raising=False)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 synthetic examples (70 train / 15 val / 15 test) in the Hateful Memes layout."""
    return make_synthetic(tmp_path_factory.mktemp("engine_synthetic"), n=100, seed=0)


@pytest.fixture(scope="session")
def synthetic_splits(synthetic_root: Path) -> dict:
    return load_splits(DataConfig(root=synthetic_root, preset="hateful_memes"))
