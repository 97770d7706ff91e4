"""The service running from an ONNX export: same answers as PyTorch, which file it picks, and ``mmfuse export``."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from _serve_runs import make_checkpoint, png_bytes
from typer.testing import CliRunner

from mmfuse.cli import app as cli

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')
pytest.importorskip("fastapi", reason='the server needs the serve extra: pip install "mmfuse[serve]"')


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("onnx-run"), "cross_attention", threshold=0.45)


@pytest.fixture(scope="module")
def exported(checkpoint) -> Path:
    """The checkpoint exported (TorchScript: seconds) to its default place, ``<checkpoint>/export/model.onnx``."""
    from mmfuse.export import default_onnx_path, export_run

    result = export_run(checkpoint, exporter="torchscript")
    assert result.path == default_onnx_path(checkpoint) and result.path.is_file()
    return result.path


def _items(n: int) -> list[dict]:
    texts = ["a cat at night", "", "the moon and a much longer sentence about the moon"]
    return [
        {"text": texts[i % 3], "image": base64.b64encode(png_bytes(width=40 + 9 * i, seed=20 + i)).decode()}
        for i in range(n)
    ]


@pytest.mark.numerics
def test_the_service_runs_from_the_onnx_file_with_pytorchs_answers(checkpoint, exported):
    from fastapi.testclient import TestClient

    from mmfuse.export import OnnxPredictor
    from mmfuse.serve import TorchPredictor, create_app, load_predictor

    onnx_predictor = load_predictor(exported)
    assert isinstance(onnx_predictor, OnnxPredictor)
    items = _items(3)
    with TestClient(create_app(onnx_predictor)) as onnx_client:
        info = onnx_client.get("/info").json()
        single = onnx_client.post("/predict", json=items[0])
        batch = onnx_client.post("/predict/batch", json={"items": items})
    with TestClient(create_app(TorchPredictor.from_run(checkpoint))) as torch_client:
        want = torch_client.post("/predict/batch", json={"items": items}).json()["predictions"]

    assert info["backend"] == "onnx" and info["head"] == "cross_attention"
    assert info["classes"] == ["benign", "hateful"] and info["threshold"] == pytest.approx(0.45)
    assert info["attention"] is True and info["image_reliance"] is True
    assert info["encoders"]["text"].endswith("tiny-bert")  # rebuilt from the config in the file's metadata
    assert single.status_code == 200 and batch.status_code == 200, (single.text, batch.text)
    # onnxruntime's kernels vs PyTorch's, on batches of 1 and 3: <= 6e-8 apart measured (with torch's vector and
    # scalar kernels); 1e-5 is a wide margin that a wrong weight, input or label order still fails
    assert single.json()["probabilities"] == pytest.approx(want[0]["probabilities"], abs=1e-5)
    for got, expected in zip(batch.json()["predictions"], want, strict=True):
        assert got["label"] == expected["label"]
        assert got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
        assert got["image_reliance"] == pytest.approx(expected["image_reliance"], abs=1e-5)
        assert got["attention"]["grid"] == expected["attention"]["grid"]
        assert got["attention"]["weights"] == [pytest.approx(row, abs=1e-5) for row in expected["attention"]["weights"]]


def test_load_predictor_picks_the_export(checkpoint, exported, monkeypatch):
    """An export folder and ``onnx=True`` on the checkpoint use the file there while it is of this checkpoint."""
    from mmfuse.export import OnnxPredictor
    from mmfuse.export import onnx_export as module
    from mmfuse.serve import load_predictor

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the export is current")

    monkeypatch.setattr(module, "export_run", no_export)
    for predictor in (load_predictor(exported.parent), load_predictor(checkpoint, onnx=True)):
        assert isinstance(predictor, OnnxPredictor) and predictor.path == exported


def test_a_stale_export_is_made_again(checkpoint, exported, tmp_path, monkeypatch):
    """An export of another checkpoint (its digest differs) is replaced before serving with ``onnx=True``."""
    import shutil

    from mmfuse.export import OnnxPredictor
    from mmfuse.export import onnx_export as module
    from mmfuse.serve import load_predictor

    other = make_checkpoint(tmp_path, "cross_attention", seed=1)  # other weights
    (other / "export").mkdir()
    shutil.copy(exported, other / "export" / "model.onnx")
    calls = []
    real = module.export_run

    def torchscript_export(run, out=None, **kwargs):
        calls.append(run)
        return real(run, out, **{**kwargs, "exporter": "torchscript"})

    monkeypatch.setattr(module, "export_run", torchscript_export)
    predictor = load_predictor(other, onnx=True)
    assert calls == [other]
    assert isinstance(predictor, OnnxPredictor)
    assert predictor.metadata["checkpoint_digest"] == module.checkpoint_digest(other)


def test_an_export_without_its_preprocessing_files_is_made_again(checkpoint, exported, tmp_path, monkeypatch, caplog):
    """An export of this checkpoint whose preprocessing folder is missing (an older mmfuse, or the .onnx copied
    alone) is exported again with ``onnx=True``, saying why, so the server does not load the encoders' weights."""
    import logging
    import shutil

    from mmfuse.export import OnnxPredictor, preprocessing_dir
    from mmfuse.export import onnx_export as module
    from mmfuse.serve import load_predictor

    run = tmp_path / "run"
    shutil.copytree(checkpoint, run)
    shutil.rmtree(preprocessing_dir(run / "export" / "model.onnx"))
    calls = []
    real = module.export_run

    def torchscript_export(run, out=None, **kwargs):
        calls.append(run)
        return real(run, out, **{**kwargs, "exporter": "torchscript"})

    monkeypatch.setattr(module, "export_run", torchscript_export)
    with caplog.at_level(logging.WARNING, logger="mmfuse.serve"):
        predictor = load_predictor(run, onnx=True)
    assert calls == [run]
    assert "preprocessing folder" in caplog.text and "is missing" in caplog.text and "exporting again" in caplog.text
    assert isinstance(predictor, OnnxPredictor)
    assert predictor.preprocessing == str(preprocessing_dir(run / "export" / "model.onnx"))


def test_a_file_mmfuse_did_not_export_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from mmfuse.serve import load_predictor

    node = helper.make_node("Identity", ["x"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y])), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="no mmfuse metadata"):
        load_predictor(tmp_path / "foreign.onnx")


def test_cli_export_writes_a_checked_file(checkpoint, tmp_path):
    out = tmp_path / "cli" / "m.onnx"
    result = CliRunner().invoke(cli, ["export", str(checkpoint), "--exporter", "torchscript", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert f"wrote {out}" in result.output and "torchscript exporter" in result.output
    assert "onnxruntime vs PyTorch: max |difference|" in result.output
    assert "inputs:  input_ids, attention_mask, token_type_ids, pixel_values" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "unknown export format 'tflite'"),
        (["--exporter", "fast"], "--exporter must be one of dynamo, torchscript"),
        (["--out", "model.pt"], "must end in .onnx"),
    ],
)
def test_cli_export_refuses_bad_arguments_with_exit_2(checkpoint, args, message):
    result = CliRunner().invoke(cli, ["export", str(checkpoint), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_export_of_a_missing_run_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "not found" in result.output
