"""``concat``: late fusion by concatenating the pooled image and text vectors, then a classifier."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.fusion._layers import check_classes, check_dropout, check_hidden, mlp_classifier, require_encoder
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_image, encode_text
from mmfuse.fusion.registry import FUSION_HEADS


@FUSION_HEADS.register("concat")
class ConcatHead(nn.Module):
    """Late fusion: ``[image ; text]`` → dropout → linear, or an MLP when ``hidden > 0``.

    A linear layer on a concatenation scores ``w_i·image + w_t·text``: a sum of one term per modality, which
    cannot model an interaction between them (a label that is the XOR of a text concept and an image concept,
    "this caption is fine, this picture is fine, together they are hateful"). The default is therefore an MLP
    with one hidden layer; ``hidden=0`` gives the purely additive linear baseline.

    Args:
        text_encoder: built text encoder (owned as a submodule).
        image_encoder: built image encoder (owned as a submodule).
        num_classes: number of logits ``C``.
        hidden: width of the classifier's hidden layer; 0 for a single linear layer.
        dropout: dropout on the classifier's inputs (and hidden layer).
        normalize: LayerNorm each modality's pooled vector before concatenating, so an encoder with larger
            feature values (e.g. a CNN after ReLU) does not drown the other.
    """

    uses_text: ClassVar[TextUse] = "pooled"
    uses_image: ClassVar[ImageUse] = "pooled"

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
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
        self.text_encoder = require_encoder("concat", "text", text_encoder)
        self.image_encoder = require_encoder("concat", "image", image_encoder)
        d_text, d_image = text_encoder.dim, image_encoder.dim
        self.text_norm = nn.LayerNorm(d_text) if normalize else nn.Identity()
        self.image_norm = nn.LayerNorm(d_image) if normalize else nn.Identity()
        self.classifier = mlp_classifier(d_image + d_text, num_classes, hidden, dropout)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)`` and ``fused`` ``(B, D_image + D_text)``, the concatenation."""
        text = self.text_norm(encode_text(self.text_encoder, inputs).pooled)  # (B, D_text)
        image = self.image_norm(encode_image(self.image_encoder, inputs).pooled)  # (B, D_image)
        fused = torch.cat([image, text], dim=-1)
        logits, embedding = classify(self.classifier, fused)
        return FusionOutput(logits=logits, fused=fused, embedding=embedding)
