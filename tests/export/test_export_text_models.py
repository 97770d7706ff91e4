"""ONNX export of heads on the new text model types (tiny random models, tests/_tiny_text.py): the exported file with
its saved tokenizer (loaded alone, no PyTorch encoder) reproduces PyTorch on other batch sizes and text lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _serve_runs import png_bytes

from _tiny import tiny_image_encoder
from _tiny_text import tiny_text_model
from mmfuse.fusion import build_head

pytest.importorskip("onnxruntime", reason='ONNX export needs the serve extra: pip install "mmfuse[serve]"')

TEXTS = ["one", "", "a longer caption than any seen during the export, to stretch the sequence axis"]


def _images(n: int):
    from mmfuse.serve import decode_image

    return [decode_image(png_bytes(width=30 + 17 * i, height=50 - 5 * i, seed=10 + i)) for i in range(n)]


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("head_name", "text_kind"),
    [
        ("early_fusion", "deberta-v3"),  # relative positions, image tokens after each row's text (a gather)
        ("early_fusion", "modernbert"),  # rotary positions, sliding-window layer
        ("cross_attention", "clip"),  # CLIP text tower: projected pooled, token states and mask
        ("concat", "siglip"),  # SigLIP: padded to max_length, no attention mask in the model
    ],
)
def test_new_text_models_export_and_match_pytorch(head_name, text_kind, tmp_path):
    from mmfuse.export import OnnxPredictor, export_onnx
    from mmfuse.serve import TorchPredictor

    torch.manual_seed(0)
    head = build_head(
        head_name, text_encoder=tiny_text_model(text_kind), image_encoder=tiny_image_encoder("clip"), num_classes=3
    ).eval()
    torch_predictor = TorchPredictor(head, classes=["a", "b", "c"])
    # 1e-4, as in test_export_onnx: onnxruntime's own kernels agree with torch's up to float32 rounding (<= 2.2e-7
    # measured on these tiny models); a wrong weight or op moves probabilities by far more
    result = export_onnx(head, tmp_path / "model.onnx", classes=torch_predictor.classes, exporter="torchscript")
    assert result.fallback_reason is None and max(result.max_abs_diff.values()) <= 1e-4
    assert {"input_ids", "attention_mask", "pixel_values"} <= set(result.inputs)

    onnx_predictor = OnnxPredictor(result.path)  # tokenizer and image processor from the files beside the .onnx
    for n in (1, 3):
        texts, images = TEXTS[:n], _images(n)
        pixels = [torch_predictor.prepare_image(im) for im in images]
        want = torch_predictor.predict(texts, pixels)
        got = onnx_predictor.predict(texts, pixels)
        for w, g in zip(want, got, strict=True):
            assert g.label == w.label
            assert list(g.probabilities.values()) == pytest.approx(list(w.probabilities.values()), abs=1e-4)
            if w.attention is not None:
                np.testing.assert_allclose(g.attention, w.attention, atol=1e-4)
