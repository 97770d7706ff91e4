"""``image_only``: a classifier on the pooled image vector alone — the baseline every fusion head must beat.

The text encoder is ``None`` and never run; batches for it may carry no text at all.
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
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_image
from mmfuse.fusion.registry import FUSION_HEADS


@FUSION_HEADS.register("image_only")
class ImageOnlyHead(nn.Module):
    """Pooled image → (LayerNorm) → the same MLP classifier as ``concat``.

    Args:
        text_encoder: must be ``None`` (kept in the signature so every head is built the same way).
        image_encoder: built image encoder (owned as a submodule).
        num_classes: number of logits ``C``.
        hidden: width of the classifier's hidden layer; 0 for a single linear layer.
        dropout: dropout on the classifier's inputs (and hidden layer).
        normalize: LayerNorm the pooled vector first (as ``concat`` does per modality).
    """

    uses_text: ClassVar[TextUse] = None
    uses_image: ClassVar[ImageUse] = "pooled"

    def __init__(
        self,
        *,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder,
        num_classes: int,
        hidden: int = 256,
        dropout: float = 0.1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        check_hidden(hidden)
        check_dropout(dropout)
        refuse_encoder("image_only", "text", text_encoder)
        self.text_encoder = None
        self.image_encoder = require_encoder("image_only", "image", image_encoder)
        self.norm = nn.LayerNorm(image_encoder.dim) if normalize else nn.Identity()
        self.classifier = mlp_classifier(image_encoder.dim, num_classes, hidden, dropout)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)`` and ``fused`` ``(B, D_image)``, the (normalised) pooled image."""
        fused = self.norm(encode_image(self.image_encoder, inputs).pooled)
        logits, embedding = classify(self.classifier, fused)
        return FusionOutput(logits=logits, fused=fused, embedding=embedding)
