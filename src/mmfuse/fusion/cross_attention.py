"""``cross_attention``: text tokens attend over image regions; a learned gate joins the result with the text.

Shapes: B examples, T text tokens (padded), N image regions/patches, D the attention width.

1. Each valid text token is a query over the N regions of *its own* image (scaled dot-product, ``num_heads``
   heads, padded regions masked). Attention never crosses the batch dimension, and the keys are the image's
   regions, not one pooled image vector (softmax over a single key is always 1.0 and says nothing).
2. The attended region mixes are averaged over the valid text tokens: one image vector per example, read the
   way the text asked for it.
3. A gated multimodal unit (Arevalo et al., 2017) joins it with the text vector:
   ``z = σ(W [text ; image])``, ``fused = z ⊙ tanh(W_i image) + (1 − z) ⊙ tanh(W_t text)``; the mean of
   ``z`` is ``image_reliance``, how much of ``fused`` came from the image (0 where the image is absent).
4. An MLP classifies ``fused``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.fusion._layers import (
    check_classes,
    check_dropout,
    check_hidden,
    check_positive,
    masked_mean,
    mlp_classifier,
    require_encoder,
    sequence_dim,
)
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_image, encode_text
from mmfuse.fusion.registry import FUSION_HEADS


@FUSION_HEADS.register("cross_attention")
class CrossAttentionHead(nn.Module):
    """Text-to-image cross-attention with a gated join; returns attention maps and the image's reliance.

    Args:
        text_encoder: built text encoder; its output must have a token ``sequence`` (owned as a submodule).
        image_encoder: built image encoder; its output must have a region/patch grid (owned as a submodule).
        num_classes: number of logits ``C``.
        dim: width ``D`` of queries, keys, values and of ``fused``.
        num_heads: attention heads; must divide ``dim``. The returned attention is their average.
        hidden: width of the classifier's hidden layer; 0 for a single linear layer.
        dropout: dropout on the attention probabilities used for the values, and in the classifier.
    """

    uses_text: ClassVar[TextUse] = "sequence"
    uses_image: ClassVar[ImageUse] = "grid"

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        num_classes: int,
        dim: int = 256,
        num_heads: int = 4,
        hidden: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        check_positive("dim", dim)
        check_positive("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}; e.g. dim={num_heads * 64}")
        check_hidden(hidden)
        check_dropout(dropout)
        self.text_encoder = require_encoder("cross_attention", "text", text_encoder)
        self.image_encoder = require_encoder("cross_attention", "image", image_encoder)
        self.num_heads = num_heads
        d_tok, d_reg, d_text = sequence_dim(text_encoder), sequence_dim(image_encoder), text_encoder.dim

        # LayerNorm first: text states and CNN/ViT grid features live on very different scales.
        self.token_norm = nn.LayerNorm(d_tok)
        self.region_norm = nn.LayerNorm(d_reg)
        self.q_proj = nn.Linear(d_tok, dim)
        self.k_proj = nn.Linear(d_reg, dim)
        self.v_proj = nn.Linear(d_reg, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_dropout = nn.Dropout(dropout)

        self.text_norm = nn.LayerNorm(d_text)
        self.text_in = nn.Linear(d_text, dim)  # W_t
        self.image_in = nn.Linear(dim, dim)  # W_i
        self.gate = nn.Linear(d_text + dim, dim)  # W
        self.classifier = mlp_classifier(dim, num_classes, hidden, dropout)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)``, ``fused`` ``(B, D)``, ``attention`` ``(B, T, N)`` (rows of valid text
        tokens sum to 1 over valid regions, padding rows are 0), ``image_reliance`` ``(B,)`` in ``[0, 1]`` and ``grid``
        (the image grid's ``(h, w)``)."""
        text = encode_text(self.text_encoder, inputs)
        image = encode_image(self.image_encoder, inputs)
        if text.sequence is None:
            raise ValueError("cross_attention needs per-token text states, but the text encoder returned none")
        if image.sequence is None:
            raise ValueError(
                "cross_attention needs an image region/patch grid, but the image encoder returned none; "
                "use an encoder with a grid, or a pooled head (concat, align, cross)"
            )
        tokens, regions = text.sequence, image.sequence  # (B, T, d_tok), (B, N, d_reg)
        b, t, n, h = tokens.shape[0], tokens.shape[1], regions.shape[1], self.num_heads
        text_mask = text.mask if text.mask is not None else tokens.new_ones(b, t, dtype=torch.bool)
        region_mask = image.mask if image.mask is not None else regions.new_ones(b, n, dtype=torch.bool)

        # (B, L, D) -> (B, heads, L, D/heads)
        q = self.q_proj(self.token_norm(tokens)).view(b, t, h, -1).transpose(1, 2)
        k = self.k_proj(self.region_norm(regions)).view(b, n, h, -1).transpose(1, 2)
        v = self.v_proj(self.region_norm(regions)).view(b, n, h, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, T, N): per example, never across B
        # finfo.min rather than -inf: a row with no valid region gives a uniform row, not NaN.
        scores = scores.masked_fill(~region_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1)
        mixed = (self.attn_dropout(probs) @ v).transpose(1, 2).reshape(b, t, -1)  # (B, T, D)
        attended = masked_mean(self.out_proj(mixed), text_mask)  # (B, D): average over valid text tokens

        text_vec = self.text_norm(text.pooled)  # (B, d_text)
        z = torch.sigmoid(self.gate(torch.cat([text_vec, attended], dim=-1)))  # (B, D)
        if inputs.image_present is not None:
            z = z * inputs.image_present.to(z.dtype)[:, None]  # an absent image contributes nothing
        fused = z * torch.tanh(self.image_in(attended)) + (1 - z) * torch.tanh(self.text_in(text_vec))

        attention = probs.mean(dim=1) * text_mask[:, :, None].to(probs.dtype)  # (B, T, N), padding rows 0
        logits, embedding = classify(self.classifier, fused)
        return FusionOutput(
            logits=logits,
            fused=fused,
            attention=attention,
            image_reliance=z.mean(dim=-1),
            embedding=embedding,
            grid=image.grid,  # (h, w) of the N regions, for the attention plots
        )
