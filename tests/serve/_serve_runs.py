"""Checkpoint folders of untrained tiny models, made in seconds, for the serving and export tests.

Plain functions, importable as ``from _serve_runs import ...`` (tests/serve is on ``sys.path`` for the tests here;
tests/export/conftest.py adds it for the export tests).
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _tiny import tiny_bert_dir, tiny_clip_vision_dir, tiny_resnet_dir

_IMAGE_DIRS = {"clip": tiny_clip_vision_dir, "resnet": tiny_resnet_dir}


def make_checkpoint(
    folder: Path,
    head: str = "cross_attention",
    *,
    image: str = "clip",
    classes: tuple[str, ...] = ("benign", "hateful"),
    threshold: float | None = 0.4,
    seed: int = 0,
    temperature: float | None = None,
    calibrate: str | None = None,
) -> Path:
    """Saves an untrained ``head`` over the tiny BERT and the tiny ``image`` encoder as a checkpoint folder that
    ``MultimodalClassifier.load`` reads. The encoder folders are copied beside it, so the checkpoint outlives this
    process (a server or CLI started in a subprocess can load it).

    Its run config asks for calibration (``train.calibrate: temperature``) when it has a ``temperature`` (a
    calibrated model, as fit saves one), and not otherwise: an untrained model was never calibrated, and loading it
    must not warn (:class:`~mmfuse.model.predictor.UncalibratedWarning`). ``calibrate`` sets ``train.calibrate``
    against that, e.g. ``"temperature"`` without a temperature for a run whose calibration is missing."""
    from mmfuse.data.labels import LabelMap
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.model.build import build_model

    encoders = folder / "encoders"
    text_dir, image_dir = encoders / "tiny-bert", encoders / f"tiny-{image}"
    if not text_dir.exists():
        shutil.copytree(tiny_bert_dir(), text_dir)
    if not image_dir.exists():
        shutil.copytree(_IMAGE_DIRS[image](), image_dir)
    if calibrate is None:
        calibrate = "none" if temperature is None else "temperature"
    clf = MultimodalClassifier(head=head, text_encoder=str(text_dir), image_encoder=str(image_dir), calibrate=calibrate)
    torch.manual_seed(seed)
    clf.model = build_model(clf.config.model, len(classes))
    clf.label_map = LabelMap(list(classes))
    clf.threshold = threshold if len(classes) == 2 else None
    clf.temperature = temperature
    return clf.save(folder / "checkpoint")


def png_bytes(width: int = 80, height: int = 60, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A small random image, encoded."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@contextmanager
def running_server(app, *, timeout: float = 30.0) -> Iterator[str]:
    """Runs ``app`` with uvicorn on 127.0.0.1 (a free port) in a background thread; yields its base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
