"""ONNX export of heads on transformers vision backbones (ViT; the 8×2 grid of a tall-patch DINOv2): onnxruntime
reproduces PyTorch, and the export records the image grid so the ONNX server lays attention out on it."""

from __future__ import annotations

import pytest
import torch
from test_export_onnx import _check_export

from _tiny import tiny_text_encoder
from _tiny_vision import tiny_tall_grid_dir, tiny_vision_dir
from mmfuse.encoders import build_image_encoder
from mmfuse.fusion import build_head

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')


def _head(name: str, folder) -> torch.nn.Module:
    torch.manual_seed(0)
    image_encoder = build_image_encoder(str(folder))
    return build_head(name, text_encoder=tiny_text_encoder(), image_encoder=image_encoder, num_classes=3).eval()


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["concat", "cross_attention", "early_fusion"])
def test_vit_heads_export_and_match_pytorch(name, tmp_path):
    result = _check_export(_head(name, tiny_vision_dir("vit")), tmp_path, "torchscript")
    if name == "cross_attention":
        from mmfuse.export import read_metadata

        assert read_metadata(result.path)["image_grid"] == [4, 4]


@pytest.mark.numerics
def test_the_onnx_predictor_lays_attention_on_the_recorded_grid(tmp_path):
    from _serve_runs import png_bytes

    from mmfuse.export import OnnxPredictor
    from mmfuse.serve import decode_image

    head = _head("cross_attention", tiny_tall_grid_dir())
    result = _check_export(head, tmp_path, "torchscript")  # ONNX and PyTorch attention agree cell for cell
    predictor = OnnxPredictor(result.path, text_encoder=head.text_encoder, image_encoder=head.image_encoder)
    pixels = [predictor.prepare_image(decode_image(png_bytes(width=40, height=40, seed=1)))]
    (prediction,) = predictor.predict(["a cat"], pixels)
    assert prediction.attention.shape == (8, 2)  # a guess from 16 regions of a square input would be 4×4


@pytest.mark.slow
def test_vit_cross_attention_exports_with_dynamo(tmp_path):
    """The default exporter on a patch-token backbone (the grid slicing after [CLS] and the grid's ints)."""
    result = _check_export(_head("cross_attention", tiny_vision_dir("vit")), tmp_path, "dynamo")
    assert "attention" in result.outputs
