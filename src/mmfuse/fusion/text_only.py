"""``text_only``: a classifier on the pooled text vector alone — the baseline every fusion head must beat.

The image encoder is ``None`` and never run; batches for it may carry no image at all.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.fusion._layers import (
    check_classes,
    check_dropout,
    check_hidden,
    mlp_classifier,
    refuse_encoder,
    require_encoder,
)
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_text
from mmfuse.fusion.registry import FUSION_HEADS


@FUSION_HEADS.register("text_only")
class TextOnlyHead(nn.Module):
    """Pooled text → (LayerNorm) → the same MLP classifier as ``concat``.

    Args:
        text_encoder: built text encoder (owned as a submodule).
        image_encoder: must be ``None`` (kept in the signature so every head is built the same way).
        num_classes: number of logits ``C``.
        hidden: width of the classifier's hidden layer; 0 for a single linear layer.
        dropout: dropout on the classifier's inputs (and hidden layer).
        normalize: LayerNorm the pooled vector first (as ``concat`` does per modality).
    """

    uses_text: ClassVar[TextUse] = "pooled"
    uses_image: ClassVar[ImageUse] = None

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder | None = None,
        num_classes: int,
        hidden: int = 256,
        dropout: float = 0.1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        check_hidden(hidden)
        check_dropout(dropout)
        self.text_encoder = require_encoder("text_only", "text", text_encoder)
        refuse_encoder("text_only", "image", image_encoder)
        self.image_encoder = None
        self.norm = nn.LayerNorm(text_encoder.dim) if normalize else nn.Identity()
        self.classifier = mlp_classifier(text_encoder.dim, num_classes, hidden, dropout)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)`` and ``fused`` ``(B, D_text)``, the (normalised) pooled text."""
        fused = self.norm(encode_text(self.text_encoder, inputs).pooled)
        logits, embedding = classify(self.classifier, fused)
        return FusionOutput(logits=logits, fused=fused, embedding=embedding)
