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

from _unwritable import FAULT_ENV, REASONS, full_log_stream, unwritable

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


def test_a_log_on_a_full_disk_never_fails_a_request_and_health_says_it(
    tiny_predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fastapi.testclient import TestClient

    from mmfuse.serve import create_app

    log = logging.getLogger("mmfuse.serve")
    with unwritable("full", tmp_path / "place", monkeypatch) as place:
        stream = full_log_stream(place, "server.log")
        handler = logging.StreamHandler(stream)
        log.addHandler(handler)
        try:
            with TestClient(create_app(tiny_predictor)) as client:
                bad = {"items": [_item(), {"text": "x", "image": "%%%"}]}  # logs a warning for the bad item
                answers = [client.post("/predict/batch", json=bad) for _ in range(3)]
                health = client.get("/health")
        finally:
            log.removeHandler(handler)
            with contextlib.suppress(OSError):  # its buffer cannot be flushed to the full disk either
                stream.close()
    assert [a.status_code for a in answers] == [200] * 3 and all(a.json()["failed"] == 1 for a in answers)
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    (problem,) = health.json()["problems"]
    assert "3 log record(s)" in problem and REASONS["full"] in problem and "free space" in problem
    assert "Traceback" not in capsys.readouterr().err  # logging's own report per record is not printed


@pytest.mark.slow
def test_mmfuse_serve_with_its_output_on_a_disk_that_fills_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real command, its output (stdout and stderr: uvicorn's access log, mmfuse's log) going to a file on a disk
    that fills up while it runs, then its model folder moved away: it keeps answering, and /health says both."""
    import socket
    import subprocess
    import sys
    import time

    from _serve_runs import make_checkpoint

    from _unwritable import fill

    httpx = pytest.importorskip("httpx")
    run = make_checkpoint(tmp_path / "run", "concat")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import mmfuse

    src = str(Path(mmfuse.__file__).resolve().parents[1])  # the mmfuse this test imports
    cmd = [sys.executable, "-c", "from mmfuse.cli import main; main()", "serve", str(run), "--port", str(port)]
    with unwritable("full", tmp_path / "place", monkeypatch, free=64 << 10) as place:
        mounted = not os.environ.get(FAULT_ENV)
        out = open(place / "server.log", "wb") if mounted else subprocess.PIPE  # noqa: SIM115
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": src}, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 120
            while True:  # until it answers
                assert proc.poll() is None, "the server stopped while starting"
                try:
                    if httpx.get(f"{url}health", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.5)  # poll interval
            if mounted:
                fill(place, 0)  # the disk fills up under the running server
            else:  # no mount here: the output goes to a pipe nobody reads any more
                proc.stdout.close()
            for _ in range(150):  # access-log lines enough to fill the log file's last page (4 KiB)
                assert httpx.get(f"{url}info", timeout=30).status_code == 200
            answers = [
                httpx.post(f"{url}predict", data={"text": "hi"}, files={"image": ("a.png", png_bytes())}, timeout=30)
                for _ in range(3)
            ]
            moved = run.rename(tmp_path / "moved")
            health = httpx.get(f"{url}health", timeout=30)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if mounted:
                out.close()
    assert [a.status_code for a in answers] == [200] * 3 and alive
    assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
    logs, source = sorted(health.json()["problems"], key=lambda p: "log record" not in p)
    assert "log record(s) could not be written" in logs
    assert REASONS["full"] in logs if mounted else "Broken pipe" in logs
    assert str(run) in source and "cannot be read" in source and moved.is_dir()
