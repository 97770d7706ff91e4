"""Fixtures of the feature-cache tests: a small synthetic dataset, frozen tiny encoders, a private cache folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from _tiny import tiny_image_encoder, tiny_text_encoder
from mmfuse.data import DataConfig, Example, load_splits, make_synthetic
from mmfuse.encoders import ImageEncoder, TextEncoder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own default cache folder: nothing is written under the user's home."""
    folder = tmp_path / "default-cache"
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("cache-synth"), n=60, seed=3, image_size=48)


@pytest.fixture(scope="session")
def synth_splits(synth_root: Path) -> dict:
    return load_splits(DataConfig(root=synth_root, preset="hateful_memes"))


@pytest.fixture(scope="session")
def examples(synth_splits: dict) -> list[Example]:
    """The 42 training examples (their images are PNG files under the session's temporary folder)."""
    return list(synth_splits["train"].examples)


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    encoder = tiny_text_encoder()
    encoder.freeze()
    return encoder


@pytest.fixture(scope="module")
def image_encoder() -> ImageEncoder:
    encoder = tiny_image_encoder("resnet")
    encoder.freeze()
    return encoder
