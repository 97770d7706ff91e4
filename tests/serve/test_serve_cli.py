"""``mmfuse serve``: what it loads, its errors, the package boundaries, and (slow) the real command end to end."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _serve_runs import make_checkpoint, png_bytes
from typer.testing import CliRunner

from mmfuse.cli import app as cli

pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_library_never_imports_the_server_and_the_server_imports_fastapi_lazily():
    code = (
        "import sys; import mmfuse.fusion, mmfuse.encoders, mmfuse.serve, mmfuse.export\n"
        "bad = [m for m in sys.modules if m.startswith(('fastapi', 'uvicorn', 'onnxruntime', 'mmfuse.serve.',"
        " 'mmfuse.export.', 'mmfuse.engine'))]\n"
        "assert not bad, bad"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


def test_a_missing_serve_extra_says_how_to_install_it():
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "try:\n    import mmfuse.serve.app\nexcept ImportError as e:\n    print(e)\n"
    )
    result = _python(code)
    assert 'pip install "mmfuse[serve]"' in result.stdout, result.stdout + result.stderr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run"), "cross_attention")


def test_load_predictor_reads_a_checkpoint_with_its_classes_and_threshold(checkpoint):
    from mmfuse.serve import TorchPredictor, load_predictor

    predictor = load_predictor(checkpoint)
    assert isinstance(predictor, TorchPredictor)
    assert predictor.classes == ["benign", "hateful"] and predictor.threshold == pytest.approx(0.4)
    assert predictor.info()["head"] == "cross_attention"
    assert predictor.info()["encoders"]["text"].endswith("tiny-bert")


def test_load_predictor_warns_about_a_checkpoint_whose_run_asked_for_calibration_it_lacks(tmp_path):
    """The one serve-side check of :class:`UncalibratedWarning` (the other checkpoints here do not ask for
    calibration, so loading them is silent): the server still loads it, with the model's own softmax."""
    from mmfuse import UncalibratedWarning
    from mmfuse.serve import load_predictor

    uncalibrated = make_checkpoint(tmp_path, "cross_attention", calibrate="temperature")
    with pytest.warns(UncalibratedWarning, match="is not calibrated: its probabilities are the model's own softmax"):
        predictor = load_predictor(uncalibrated)
    assert predictor.temperature is None and predictor.classes == ["benign", "hateful"]


def test_load_predictor_errors_name_the_path_and_the_fix(tmp_path):
    from mmfuse.serve import load_predictor

    with pytest.raises(FileNotFoundError, match="not found; pass a run folder"):
        load_predictor(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_predictor(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a readable ONNX file"):
        load_predictor(tmp_path)  # an export folder whose file is broken


def test_cli_serve_errors_exit_2_with_the_message(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "not found" in result.output
    result = CliRunner().invoke(cli, ["serve", str(tmp_path), "--max-batch", "0"])
    assert result.exit_code == 2


def _announced_url(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The URL in the server's "serving ... on URL" line: with ``--port 0`` the system picked the port, so no other
    process can take it between choosing and binding (a port chosen by the test could be)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # the process ended

    threading.Thread(target=pump, name="serve-output", daemon=True).start()
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no 'serving ... on URL' line in {timeout:.0f} s; output so far:\n{''.join(seen)}")
        if line is None:
            pytest.fail(f"the server exited with {proc.wait()} before serving:\n{''.join(seen)}")
        seen.append(line)
        found = re.search(r"serving .* on (http://127\.0\.0\.1:(\d+)/)", line)
        if found:
            assert int(found.group(2)) > 0
            return found.group(1)


@pytest.mark.slow
def test_mmfuse_serve_command_end_to_end(checkpoint):
    """The real command in a subprocess on a port the system picks: it says where it listens, answers /health and
    /predict there, and stops on Ctrl-C."""
    httpx = pytest.importorskip("httpx")
    env = {**os.environ, "PYTHONPATH": SRC}
    args = ["serve", str(checkpoint), "--port", "0", "--max-wait-ms", "5"]
    cmd = [sys.executable, "-c", "from mmfuse.cli import main; main()", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = _announced_url(proc)  # announced once it accepts requests
        assert httpx.get(f"{url}health", timeout=30).status_code == 200
        r = httpx.post(f"{url}predict", data={"text": "hello"}, files={"image": ("a.png", png_bytes())}, timeout=30)
        assert r.status_code == 200 and r.json()["label"] in ("benign", "hateful")
        assert httpx.get(f"{url}info", timeout=30).json()["backend"] == "torch"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, -signal.SIGINT)
