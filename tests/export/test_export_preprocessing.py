"""An export ships its preprocessing (tokenizer and image-processor files, no weights) beside the ``.onnx`` file, and
the ONNX predictor loads only those: no encoder is built, and the model sees exactly the inputs the old path (the
encoders rebuilt from the stored config) gave it. An export without the folder still serves, with a warning."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _serve_runs import make_checkpoint, png_bytes

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')

SRC = str(Path(__file__).resolve().parents[2] / "src")
TEXTS = ["a cat at night", "", "the moon and a much longer sentence about the moon and the stars"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("prep-run"), "cross_attention", threshold=0.45)


@pytest.fixture(scope="module")
def exported(checkpoint) -> Path:
    from mmfuse.export import export_run

    return export_run(checkpoint, exporter="torchscript").path


def _images(n: int):
    from mmfuse.serve import decode_image

    return [decode_image(png_bytes(width=40 + 9 * i, height=30 + 13 * i, seed=20 + i)) for i in range(n)]


def _old_export(exported: Path, folder: Path) -> Path:
    """``exported`` as an older mmfuse wrote it: no preprocessing folder, no ``preprocessing`` metadata entry."""
    import onnx

    from mmfuse.export.onnx_export import METADATA_KEY

    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            del meta["preprocessing"]
            prop.value = json.dumps(meta)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def test_an_export_carries_its_preprocessing_beside_the_file(checkpoint, exported):
    from mmfuse.export import export_run, preprocessing_dir, read_metadata

    last = export_run(checkpoint, exported.with_name("model-last.onnx"), exporter="torchscript", checkpoint="best")
    for path in (exported, last.path):  # model.onnx and model-last.onnx side by side, each with its own folder
        folder = preprocessing_dir(path)
        assert folder == path.with_name(f"{path.stem}.preprocessing") and folder.is_dir()
        meta = read_metadata(path)["preprocessing"]
        assert meta["folder"] == folder.name and meta["modalities"] == ["text", "image"] and len(meta["digest"]) == 64
        assert sorted(p.name for p in folder.iterdir()) == ["image", "text"]
        assert (folder / "text" / "tokenizer_config.json").is_file()
        assert (folder / "image" / "preprocessor_config.json").is_file()
        files = [p.name for p in folder.rglob("*") if p.is_file()]
        assert not [f for f in files if f.endswith((".safetensors", ".bin", ".pth", ".onnx"))], files
    assert last.preprocessing == preprocessing_dir(last.path) and not last.preprocessing_skipped
    assert not list(exported.parent.glob("*.tmp"))


def test_the_onnx_predictor_builds_no_encoder(exported):
    """In a fresh process: the predictor answers, holds no module with weights (transformers makes a few
    weightless activation modules at import), and neither the engine, an encoder's modeling code nor
    EfficientNet was imported on the way."""
    code = (
        "import gc, sys, torch\n"
        "from PIL import Image\n"
        "from mmfuse.encoders import Encoder\n"
        "from mmfuse.export import OnnxPredictor\n"
        f"p = OnnxPredictor({str(exported)!r}, threads=1)\n"
        "pixels = [p.prepare_image(Image.new('RGB', (50, 40), (200, 10, 10)))]\n"
        "print('LABEL', p.predict(['a caption'], pixels)[0].label)\n"
        "print('SOURCE', p.preprocessing)\n"
        "modules = [o for o in gc.get_objects() if isinstance(o, torch.nn.Module)]\n"
        "print('ENCODERS', [type(o).__name__ for o in modules if isinstance(o, Encoder)])\n"
        "print('WEIGHTS', sum(t.numel() for o in modules for t in [*o.parameters(), *o.buffers()]))\n"
        "print('LOADED', [m for m in sys.modules if m.startswith(('mmfuse.engine', 'efficientnet_lite'))"
        " or (m.startswith('transformers.models.') and '.modeling_' in m and '.auto.' not in m)])\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.split(" ", 1)[0].isupper())
    assert lines["LABEL"] in {"benign", "hateful"}
    assert lines["SOURCE"] == str(exported.with_name("model.preprocessing"))
    assert lines["ENCODERS"] == "[]" and lines["WEIGHTS"] == "0" and lines["LOADED"] == "[]", lines
    assert "rebuilding" not in proc.stderr


def test_files_and_rebuilt_encoders_give_the_model_the_same_inputs_and_answers(exported, tmp_path, caplog):
    """The new path against the old one (an export without the folder, like an older mmfuse wrote): the same
    token ids and pixels, exactly, hence the same predictions from the same onnxruntime graph; the old path warns."""
    from mmfuse.export import OnnxPredictor

    new = OnnxPredictor(exported, threads=1)
    with caplog.at_level(logging.WARNING, logger="mmfuse.export"):
        old = OnnxPredictor(_old_export(exported, tmp_path / "old"), threads=1)
    assert new.preprocessing.endswith("model.preprocessing") and old.preprocessing == "encoders rebuilt from the config"
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "exported without its preprocessing files (by an older mmfuse)" in warning
    assert "loads their full PyTorch weights" in warning and "mmfuse export RUN --format onnx" in warning

    for n in (1, 3):
        images = _images(n)
        new_pixels = [new.prepare_image(im) for im in images]
        old_pixels = [old.prepare_image(im) for im in images]
        new_inputs, old_inputs = new.make_inputs(TEXTS[:n], new_pixels), old.make_inputs(TEXTS[:n], old_pixels)
        assert list(new_inputs) == list(old_inputs)
        for name in new_inputs:
            assert torch.equal(new_inputs[name], old_inputs[name]), name
        # same graph, same inputs, one onnxruntime thread each: the same numbers, not merely close ones
        for a, b in zip(new.predict(TEXTS[:n], new_pixels), old.predict(TEXTS[:n], old_pixels), strict=True):
            assert a.to_dict() == b.to_dict()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("remove", "is missing (copy it along with the .onnx file)"),
        ("edit", "differs from the one exported with the file"),
    ],
)
def test_a_missing_or_changed_folder_falls_back_with_a_warning(exported, tmp_path, caplog, damage, reason):
    from mmfuse.export import OnnxPredictor, preprocessing_dir

    copy = tmp_path / "model.onnx"
    shutil.copy(exported, copy)
    shutil.copytree(preprocessing_dir(exported), preprocessing_dir(copy))
    if damage == "remove":
        shutil.rmtree(preprocessing_dir(copy))
    else:
        config = preprocessing_dir(copy) / "image" / "preprocessor_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "resample": 2}))  # bicubic -> bilinear
    with caplog.at_level(logging.WARNING, logger="mmfuse.export"):
        predictor = OnnxPredictor(copy, threads=1)
    assert predictor.preprocessing == "encoders rebuilt from the config"
    assert reason in caplog.text and "full PyTorch weights" in caplog.text
