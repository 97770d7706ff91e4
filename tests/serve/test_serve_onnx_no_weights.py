"""``mmfuse serve FILE.onnx`` needs only the export: the file and its preprocessing folder, copied away from the
checkpoint (which is then deleted, encoders included), serve predictions in a fresh process that opens no weights
file, builds no encoder and holds no PyTorch module with weights.

tests/export/test_export_preprocessing.py checks the ``OnnxPredictor`` alone on the file beside its checkpoint; this
checks the serving path (``load_predictor`` on a file and on a folder, ``create_app``, ``/predict``) with nothing
else on disk to fall back on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _serve_runs import make_checkpoint

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')
pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Runs in a fresh process: records every weights file opened (Python's open via an audit hook, safetensors'
# Rust reader and torch.load by wrapping them) and every encoder constructed, then serves two requests.
_PROBE = """
import base64, gc, io, json, sys
from pathlib import Path
import safetensors, safetensors.torch, torch
from PIL import Image

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and isinstance(args[0], (str,
    bytes, Path)) and str(args[0]).endswith(WEIGHT_SUFFIXES) else None)

def recording(name, real):
    def wrapper(path, *args, **kwargs):
        opened.append(f"{name}:{path}")
        return real(path, *args, **kwargs)
    return wrapper

safetensors.safe_open = recording("safe_open", safetensors.safe_open)
safetensors.torch.load_file = recording("load_file", safetensors.torch.load_file)
torch.load = recording("torch.load", torch.load)

from mmfuse.encoders import Encoder
built = []
real_init = Encoder.__init__
def counting_init(self, *args, **kwargs):
    built.append(type(self).__name__)
    real_init(self, *args, **kwargs)
Encoder.__init__ = counting_init

from fastapi.testclient import TestClient
from mmfuse.serve import create_app, load_predictor

buf = io.BytesIO()
Image.new("RGB", (60, 40), (200, 30, 10)).save(buf, format="PNG")
image = base64.b64encode(buf.getvalue()).decode()
out = {}
for target in sys.argv[1:]:
    with TestClient(create_app(load_predictor(target, threads=1))) as client:
        info = client.get("/info").json()
        answer = client.post("/predict", json={"text": "a cat at night", "image": image})
    out[target] = {"backend": info["backend"], "status": answer.status_code, "body": answer.json()}
modules = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]
out["opened"] = opened
out["built"] = built
out["encoders_alive"] = [type(o).__name__ for o in modules if isinstance(o, Encoder)]
out["weights"] = sum(t.numel() for o in modules for t in [*o.parameters(), *o.buffers()])
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def export_only(tmp_path_factory) -> Path:
    """``model.onnx`` and ``model.preprocessing/`` alone in a folder; the checkpoint and its encoders deleted."""
    from mmfuse.export import export_run, preprocessing_dir

    work = tmp_path_factory.mktemp("export-only")
    checkpoint = make_checkpoint(work / "run", "cross_attention", threshold=0.45)
    exported = export_run(checkpoint, exporter="torchscript").path
    shipped = work / "shipped"
    shipped.mkdir()
    shutil.copy(exported, shipped / "model.onnx")
    shutil.copytree(preprocessing_dir(exported), shipped / "model.preprocessing")
    shutil.rmtree(work / "run")
    return shipped


def test_serving_an_export_opens_no_weights_and_builds_no_encoder(export_only):
    files = sorted(str(p.relative_to(export_only)) for p in export_only.rglob("*") if p.is_file())
    assert "model.onnx" in files and not [f for f in files if f.endswith((".safetensors", ".bin", ".pth"))], files

    targets = [str(export_only / "model.onnx"), str(export_only)]  # `mmfuse serve FILE.onnx` and `serve FOLDER`
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *targets], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for target in targets:
        served = result[target]
        assert served["backend"] == "onnx" and served["status"] == 200, served
        assert served["body"]["label"] in {"benign", "hateful"}
        assert sum(served["body"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)  # float32 softmax
    assert result["opened"] == [], result["opened"]
    assert result["built"] == [] and result["encoders_alive"] == [] and result["weights"] == 0, result
    assert "rebuilding" not in proc.stderr
