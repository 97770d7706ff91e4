"""``cross``: Hate-CLIPper's "cross fusion" (Kumar & Nandakumar, 2022) — the outer product of the projected,
L2-normalised image and text vectors (the feature interaction matrix), flattened, then an MLP.

Every image dimension meets every text dimension: ``fused_{jk} = P · i_j · t_k``, ``P²`` features. ``P``
(``proj_dim``) is kept small by default (32 → 1024 features) since the first classifier layer grows as ``P²``.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import nn

from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.fusion._layers import (
    check_classes,
    check_dropout,
    check_hidden,
    check_positive,
    mlp_classifier,
    require_encoder,
)
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_image, encode_text
from mmfuse.fusion.registry import FUSION_HEADS


@FUSION_HEADS.register("cross")
class CrossHead(nn.Module):
    """Flattened outer product of projected, normalised image and text vectors → MLP.

    Args:
        text_encoder: built text encoder (owned as a submodule).
        image_encoder: built image encoder (owned as a submodule).
        num_classes: number of logits ``C``.
        proj_dim: shared size ``P`` both modalities are projected to; ``fused`` has ``P * P`` features.
        hidden: width of the classifier's hidden layer; 0 for a single linear layer.
        dropout: dropout in the classifier.
    """

    uses_text: ClassVar[TextUse] = "pooled"
    uses_image: ClassVar[ImageUse] = "pooled"

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        num_classes: int,
        proj_dim: int = 32,
        hidden: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        check_positive("proj_dim", proj_dim)
        check_hidden(hidden)
        check_dropout(dropout)
        self.text_encoder = require_encoder("cross", "text", text_encoder)
        self.image_encoder = require_encoder("cross", "image", image_encoder)
        self.proj_dim = proj_dim
        self.text_proj = nn.Linear(text_encoder.dim, proj_dim)
        self.image_proj = nn.Linear(image_encoder.dim, proj_dim)
        self.classifier = mlp_classifier(proj_dim * proj_dim, num_classes, hidden, dropout)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)`` and ``fused`` ``(B, P * P)``, the flattened scaled outer product."""
        text = F.normalize(self.text_proj(encode_text(self.text_encoder, inputs).pooled), dim=-1)  # (B, P)
        image = F.normalize(self.image_proj(encode_image(self.image_encoder, inputs).pooled), dim=-1)  # (B, P)
        # Entries of unit vectors are ~1/sqrt(P), so their products ~1/P: scale by P to keep features O(1).
        interaction = image[:, :, None] * text[:, None, :] * self.proj_dim  # (B, P, P)
        fused = interaction.flatten(1)
        logits, embedding = classify(self.classifier, fused)
        return FusionOutput(logits=logits, fused=fused, embedding=embedding)
