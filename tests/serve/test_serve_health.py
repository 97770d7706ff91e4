"""The server keeps answering when its model folder can no longer be read or its log cannot be written (a full disk),
and ``/health`` says what is wrong and what to do (see tests/_unwritable.py for how the full disk is made)."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
from pathlib import Path

import pytest
from _serve_runs import png_bytes

from _unwritable import FAULT_ENV, REASONS, unwritable

pytest.importorskip("fastapi", reason='the serve extra is not installed (pip install "mmfuse[serve]")')


def _predictor_from(tiny_predictor, source: Path):
    """The tiny model behind the predictor interface, as loaded from ``source``."""
    from mmfuse.serve import TorchPredictor

    return TorchPredictor(
        tiny_predictor.model, classes=tiny_predictor.classes, threshold=tiny_predictor.threshold, source=source
    )


def _item() -> dict:
    return {"text": "hello", "image": base64.b64encode(png_bytes(seed=3)).decode()}


def test_a_model_folder_that_disappears_keeps_serving_and_health_says_it(tiny_predictor, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from mmfuse.serve import create_app

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    with TestClient(create_app(_predictor_from(tiny_predictor, folder))) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/health").json()["problems"] == []
        shutil.rmtree(folder)  # deleted, moved or unmounted under the running server
        answer = client.post("/predict", json=_item())
        health = client.get("/health")
    assert answer.status_code == 200 and answer.json()["label"] in tiny_predictor.classes
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    (problem,) = health.json()["problems"]
    assert str(folder) in problem and os.strerror(2) in problem and "restore" in problem


class _FullStream:
    """A log stream on a disk that is full, where the test cannot mount one."""

    name = "<full disk>"

    def write(self, text: str) -> int:
        raise OSError(28, os.strerror(28))

    def flush(self) -> None:
        raise OSError(28, os.strerror(28))


def test_a_log_on_a_full_disk_never_fails_a_request_and_health_says_it(
    tiny_predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from mmfuse.serve import create_app

    log = logging.getLogger("mmfuse.serve")
    with unwritable("full", tmp_path / "place", monkeypatch) as place:
        stream = _FullStream() if os.environ.get(FAULT_ENV) else open(place / "server.log", "w")  # noqa: SIM115
        handler = logging.StreamHandler(stream)
        log.addHandler(handler)
        try:
            with TestClient(create_app(tiny_predictor)) as client:
                bad = {"items": [_item(), {"text": "x", "image": "%%%"}]}  # logs a warning for the bad item
                answers = [client.post("/predict/batch", json=bad) for _ in range(3)]
                health = client.get("/health")
        finally:
            log.removeHandler(handler)
            if not isinstance(stream, _FullStream):
                with contextlib.suppress(OSError):  # its buffer cannot be flushed to the full disk either
                    stream.close()
    assert [a.status_code for a in answers] == [200] * 3 and all(a.json()["failed"] == 1 for a in answers)
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    (problem,) = health.json()["problems"]
    assert "3 log record(s)" in problem and REASONS["full"] in problem and "free space" in problem
    assert "Traceback" not in capsys.readouterr().err  # logging's own report per record is not printed
