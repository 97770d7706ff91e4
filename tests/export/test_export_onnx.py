"""ONNX export: every head exports and onnxruntime reproduces PyTorch on other batch sizes and text lengths.

Default suite: every registered head with the TorchScript exporter (seconds each). Slow suite: every head with the
default dynamo exporter (~20-40 s each here), and the real offline encoders (MiniLM + EfficientNet-Lite0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _serve_runs import png_bytes

from _tiny import make_encoders
from mmfuse.fusion import FUSION_HEADS, build_head

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')

# zero_shot (no weights; both towers of one CLIP/SigLIP) has its own tests: tests/engine/test_engine_two_towers.py
HEADS = [n for n in FUSION_HEADS.names() if not getattr(FUSION_HEADS.get(n), "trains_nothing", False)]
TEXTS = ["one", "", "a longer caption than any seen during the export, to stretch the sequence axis well past it"]


def _head(name: str, kind: str = "tiny-bert+tiny-clip", num_classes: int = 3):
    torch.manual_seed(0)
    text_encoder, image_encoder = make_encoders(kind)
    return build_head(name, text_encoder=text_encoder, image_encoder=image_encoder, num_classes=num_classes).eval()


def _images(n: int):
    from mmfuse.serve import decode_image

    return [decode_image(png_bytes(width=30 + 17 * i, height=50 - 5 * i, seed=10 + i)) for i in range(n)]


def _check_export(head, tmp_path, exporter: str, classes=("a", "b", "c"), atol: float = 1e-4):
    """Exports ``head``; compares the ONNX predictor with the PyTorch one on batches of 1 and 3.

    ``atol``: onnxruntime runs its own kernels (fused attention and LayerNorm, other GEMMs), so the two agree up to
    float32 rounding: probabilities <= 1e-7 apart on the tiny encoders, with torch's vector and scalar kernels. 1e-4
    leaves room for the real encoders' deeper graphs, and is still far below a wrong weight or op (see
    test_a_mismatching_export_is_refused)."""
    from mmfuse.export import OnnxPredictor, export_onnx
    from mmfuse.serve import TorchPredictor

    torch_predictor = TorchPredictor(head, classes=list(classes))
    result = export_onnx(head, tmp_path / "model.onnx", classes=torch_predictor.classes, exporter=exporter)
    assert result.exporter == exporter and result.fallback_reason is None
    assert result.path.is_file() and not (tmp_path / "model.onnx.tmp").exists()
    assert max(result.max_abs_diff.values()) <= atol

    expected_inputs = []
    if head.uses_text is not None:
        expected_inputs += ["input_ids", "attention_mask", "token_type_ids"]  # BERT takes token types
    if head.uses_image is not None:
        expected_inputs.append("pixel_values")
    assert result.inputs == expected_inputs
    optional = {"attention", "image_reliance"} & set(torch_predictor.outputs)
    assert set(result.outputs) == {"logits", "probabilities", *optional}

    onnx_predictor = OnnxPredictor(
        result.path,
        text_encoder=getattr(head, "text_encoder", None),
        image_encoder=getattr(head, "image_encoder", None),
    )
    assert onnx_predictor.outputs == torch_predictor.outputs
    for n in (1, 3):
        texts, images = TEXTS[:n], _images(n)
        pixels = [torch_predictor.prepare_image(im) for im in images] if torch_predictor.reads_image else None
        want = torch_predictor.predict(texts, pixels)
        got = onnx_predictor.predict(texts, pixels)
        for w, g in zip(want, got, strict=True):
            assert g.label == w.label
            assert list(g.probabilities.values()) == pytest.approx(list(w.probabilities.values()), abs=atol)
            if w.attention is not None:
                np.testing.assert_allclose(g.attention, w.attention, atol=atol)
                assert g.image_reliance == pytest.approx(w.image_reliance, abs=atol)
    return result


@pytest.mark.numerics
@pytest.mark.parametrize("name", HEADS)
def test_every_head_exports_with_torchscript_and_matches_pytorch(name, tmp_path):
    _check_export(_head(name), tmp_path, "torchscript")


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADS)
def test_every_head_exports_with_dynamo_and_matches_pytorch(name, tmp_path):
    _check_export(_head(name), tmp_path, "dynamo")


@pytest.mark.slow
def test_real_offline_encoders_export_and_match_pytorch(tmp_path):
    """MiniLM + EfficientNet-Lite0 under cross-attention (every output), with the default exporter."""
    head = _head("cross_attention", "minilm+efficientnet-lite0", num_classes=2)
    result = _check_export(head, tmp_path, "dynamo", classes=("benign", "hateful"))
    print(f"\nreal encoders: {result.size_bytes / 1e6:.0f} MB, exported in {result.seconds:.0f} s")


@pytest.mark.numerics
def test_resnet_grid_and_attention_shape(tmp_path):
    """A CNN grid (tiny ResNet, 2 × 2 regions) through the export: the attention output keeps its region axis."""
    result = _check_export(_head("cross_attention", "tiny-bert+tiny-resnet"), tmp_path, "torchscript")
    assert "attention" in result.outputs


def test_dynamo_failure_falls_back_to_torchscript(tmp_path, monkeypatch):
    from mmfuse.export import ExportError, export_onnx
    from mmfuse.export import onnx_export as module

    def broken(*args, **kwargs):
        raise RuntimeError("simulated dynamo failure\nwith a long trace")

    monkeypatch.setattr(module, "_export_dynamo", broken)
    head = _head("concat")
    result = export_onnx(head, tmp_path / "m.onnx", classes=["a", "b", "c"])
    assert result.exporter == "torchscript"
    assert result.fallback_reason == "RuntimeError: simulated dynamo failure"
    with pytest.raises(ExportError, match=r"dynamo ONNX exporter failed.*torchscript"):
        export_onnx(head, tmp_path / "n.onnx", classes=["a", "b", "c"], fallback=False)
    assert not (tmp_path / "n.onnx").exists()


def test_a_mismatching_export_is_refused(tmp_path, monkeypatch):
    from mmfuse.export import ExportError, export_onnx
    from mmfuse.export import onnx_export as module

    real_finish = module._finish

    def finish_then_tamper(path, inputs, metadata):  # change the weights in the file after export
        import onnx
        from onnx import numpy_helper

        real_finish(path, inputs, metadata)
        model = onnx.load(str(path))
        rng = np.random.default_rng(0)
        for init in model.graph.initializer:  # noise, not a constant shift (LayerNorm would cancel that)
            values = numpy_helper.to_array(init)
            if values.dtype == np.float32 and values.size > 1:
                noisy = values + rng.normal(0.0, 1.0, values.shape).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(noisy, init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(module, "_finish", finish_then_tamper)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(_head("concat"), tmp_path / "m.onnx", classes=["a", "b", "c"], exporter="torchscript")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments_are_refused(tmp_path):
    from mmfuse.export import export_onnx

    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(_head("concat"), tmp_path / "model.pt", classes=["a", "b", "c"])
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_onnx(_head("concat"), tmp_path / "m.onnx", classes=["a", "b", "c"], exporter="tflite")  # type: ignore[arg-type]
