"""Fixtures for the server tests: a tiny cross-attention model behind the predictor interface, and its app."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _serve_runs, also when run from another folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An :class:`~mmfuse.UncalibratedWarning` in a serving test is an error unless the test expects it
    (``pytest.warns``): the checkpoints here do not ask for calibration, so the warning would be noise hiding real
    ones. The hook sees every collected item, so it marks only those under this folder."""
    mark = pytest.mark.filterwarnings("error::mmfuse.model.predictor.UncalibratedWarning")
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(mark)


@pytest.fixture(scope="session")
def tiny_predictor():
    """An untrained cross_attention head over the tiny BERT and tiny CLIP (attention and image reliance), binary,
    with threshold 0.4."""
    import torch

    from _tiny import tiny_image_encoder, tiny_text_encoder
    from mmfuse.fusion import build_head
    from mmfuse.serve import TorchPredictor

    torch.manual_seed(0)
    head = build_head(
        "cross_attention", text_encoder=tiny_text_encoder(), image_encoder=tiny_image_encoder("clip"), num_classes=2
    )
    return TorchPredictor(head, classes=["benign", "hateful"], threshold=0.4)


@pytest.fixture(scope="module")
def client(tiny_predictor) -> Iterator:
    """A test client of the app with small limits (300 KB images, 600 KB requests, 1 Mpx, 8 items)."""
    from fastapi.testclient import TestClient

    from mmfuse.serve import ServeSettings, create_app

    settings = ServeSettings(
        max_image_bytes=300_000, max_request_bytes=600_000, max_pixels=1_000_000, max_items=8, max_text_chars=2_000
    )
    with TestClient(create_app(tiny_predictor, settings)) as c:
        yield c
