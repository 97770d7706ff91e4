"""A calibrated model exports with its temperature: the graph's probabilities are softmax(logits / T), and the ONNX
predictor answers what the PyTorch one does."""

from __future__ import annotations

import numpy as np
import pytest
from _serve_runs import make_checkpoint, png_bytes

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')

TEMPERATURE = 2.5
TEXTS = ["one", "", "a longer caption than any seen during the export, to stretch the sequence axis"]


@pytest.fixture(scope="module")
def calibrated_checkpoint(tmp_path_factory):
    """A tiny cross-attention checkpoint saved with a calibration temperature (as fit stores one)."""
    return make_checkpoint(
        tmp_path_factory.mktemp("calibrated"), "cross_attention", threshold=0.45, temperature=TEMPERATURE
    )


@pytest.mark.numerics
def test_onnx_export_applies_the_temperature_as_pytorch_does(calibrated_checkpoint, tmp_path):
    import onnxruntime as ort

    from mmfuse.export import OnnxPredictor, export_run, read_metadata
    from mmfuse.model.prediction import probabilities
    from mmfuse.serve import TorchPredictor, decode_image

    result = export_run(calibrated_checkpoint, tmp_path / "model.onnx", exporter="torchscript")
    assert read_metadata(result.path)["temperature"] == TEMPERATURE
    torch_predictor = TorchPredictor.from_run(calibrated_checkpoint)
    onnx_predictor = OnnxPredictor(result.path)
    assert torch_predictor.temperature == onnx_predictor.temperature == TEMPERATURE
    assert onnx_predictor.info()["temperature"] == TEMPERATURE

    images = [decode_image(png_bytes(width=40 + 9 * i, height=50, seed=i)) for i in range(3)]
    pixels = [torch_predictor.prepare_image(im) for im in images]
    want, got = torch_predictor.predict(TEXTS, pixels), onnx_predictor.predict(TEXTS, pixels)
    # onnxruntime's float32 kernels against torch's: logits agree to ~1e-7 on the tiny encoders (see
    # tests/export/test_export_onnx.py); dividing by T = 2.5 only shrinks the gap, so 1e-5 is loose and still far
    # below a missing or doubled temperature (which moves these probabilities by > 1e-3)
    for w, g in zip(want, got, strict=True):
        assert g.label == w.label
        assert list(g.probabilities.values()) == pytest.approx(list(w.probabilities.values()), abs=1e-5)

    # the graph's own probabilities output, for clients that run the file without mmfuse
    inputs = onnx_predictor.make_inputs(TEXTS, pixels)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    feeds = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    logits, proba = session.run(["logits", "probabilities"], feeds)
    # float32 softmax in the graph against float64 here: a few float32 ulps
    np.testing.assert_allclose(proba, probabilities(logits, TEMPERATURE), atol=1e-6)
    assert not np.allclose(proba, probabilities(logits), atol=1e-3)  # not the raw softmax
    np.testing.assert_allclose([list(w.probabilities.values()) for w in want], proba, atol=1e-5)


def test_an_export_takes_no_item_without_an_image(calibrated_checkpoint, tmp_path):
    from mmfuse.export import OnnxPredictor, export_run

    result = export_run(calibrated_checkpoint, tmp_path / "model.onnx", exporter="torchscript")
    predictor = OnnxPredictor(result.path)
    problem = predictor.missing_image_problem()
    assert "ONNX export" in problem and "send an image" in problem
    assert predictor.info()["image_required"] is True
    with pytest.raises(ValueError, match="has no input for a missing image"):
        predictor.predict(["text only"], [None])
