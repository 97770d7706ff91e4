"""``early_fusion``: MMBT-style (Kiela et al., 2019) — image regions become extra tokens of the text transformer.

One joint sequence, ``L = T + K``, the image tokens right after each example's last real text token (``n`` of
them) and the text padding last::

    position:  0      1 … n−1           n … n+K−1          n+K … T+K−1 (masked)
    token:     [CLS]  text … [SEP]      img_1 … img_K      [PAD] …

Placed after the batch's padding instead, an image token's distance to the words would depend on the longest text
of the batch, which changes the output of a text model with relative positions (MPNet, DeBERTa, ModernBERT's
rotary positions): an example's logits would depend on its batch-mates.

- Text tokens get the text model's own input embeddings (``text_encoder.embed_tokens``: word, position and
  token-type embeddings, LayerNorm) plus a learned text-modality embedding (initialised to 0, so the pretrained
  text path starts unchanged). They are not embedded a second time: the joint sequence goes straight to the
  transformer layers (``text_encoder.encode_embeddings``), which add nothing of their own.
- Image regions are projected to the text model's hidden size and get their own learned position embeddings
  and an image-modality embedding, then a LayerNorm to the scale of the text embeddings.
- One joint attention mask: text padding and invalid (or absent) image regions are masked out.
- Index 0 stays [CLS]; the classifier reads its final state.

A grid larger than ``num_image_tokens`` regions is pooled to at most that many by adaptive 2-D average pooling over
its ``(h, w)`` (the encoder output's ``grid``; the region grid shape follows :func:`pooled_grid`), which bounds the
cost of a large grid and sizes the image position embeddings.
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
    mlp_classifier,
    require_encoder,
    sequence_dim,
)
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, classify, encode_image
from mmfuse.fusion.registry import FUSION_HEADS


def place_after_text(
    text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joins ``text`` ``(B, T, H)`` (right-padded, ``text_mask`` ``(B, T)``) and ``image`` ``(B, K, H)`` into
    ``(B, T + K, H)`` with each row's image tokens right after its ``n`` real text tokens: positions ``0 … n−1`` text,
    ``n … n+K−1`` image, then the text padding. Returns the joint sequence and its mask ``(B, T + K)``. A gather, so
    it exports to ONNX.
    """
    t, k = text_mask.shape[1], image.shape[1]
    n = text_mask.sum(dim=1, keepdim=True)  # (B, 1) real text tokens (right padding: they come first)
    pos = torch.arange(t + k, device=text.device).unsqueeze(0)  # (1, T + K)
    # joint position j reads text j (j < n), image j − n (n <= j < n + K), text padding j − K (j >= n + K)
    src = torch.where(pos < n, pos, torch.where(pos < n + k, t + pos - n, pos - k))  # (B, T + K) into [text, image]
    joint = torch.cat([text, image], dim=1).gather(1, src.unsqueeze(-1).expand(-1, -1, text.shape[-1]))
    mask = torch.cat([text_mask, image_mask], dim=1).gather(1, src)
    return joint, mask


def pooled_grid(grid: tuple[int, int], k: int) -> tuple[int, int]:
    """``(kh, kw)``: the region grid an ``(h, w)`` grid is pooled to when it has more than ``k`` cells.

    The rule: ``kh = round(sqrt(k · h / w))`` clipped to ``[1, h]``, then ``kw = k // kh`` clipped to ``[1, w]``: at
    most ``k`` regions, the aspect ratio of the grid kept as far as whole numbers allow, never finer than the grid
    in either direction (7×7 → 4×4 for ``k = 16``; 24×24 → 4×4; 7×9 → 4×4; 1×N → 1×k; 7×7 → 3×3 for ``k = 10``).
    """
    h, w = grid
    kh = min(h, max(1, round(math.sqrt(k * h / w))))
    kw = min(w, max(1, k // kh))
    return kh, kw


def _bins(n: int, k: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(k, n)`` 0/1: bin ``i`` covers cells ``[floor(i·n/k), ceil((i+1)·n/k))``, the bins of adaptive pooling."""
    cell = torch.arange(n, device=device)
    run = torch.arange(k, device=device)
    start, end = (run * n) // k, ((run + 1) * n + k - 1) // k
    return ((cell >= start[:, None]) & (cell < end[:, None])).to(dtype)


def pool_regions(
    regions: torch.Tensor, mask: torch.Tensor, k: int, grid: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive 2-D average pooling of a region grid to at most ``k`` regions, counting valid regions only.

    Args:
        regions: ``(B, N, D)``, the cells of an ``(h, w)`` grid row-major (``N == h·w``).
        mask: ``(B, N)`` bool, the valid cells.
        k: at most this many regions out.
        grid: ``(h, w)`` (the encoder output's ``grid``); ``None`` (an encoder that does not say): one row of N
            regions, pooled in runs of consecutive regions.

    Returns the pooled regions ``(B, kh·kw, D)``, row-major over the ``(kh, kw)`` of :func:`pooled_grid`, and their
    mask (a region is valid if any of its cells is). Each output region averages the valid cells of a rectangle of
    the grid (the bins of ``adaptive_avg_pool2d``), so it never mixes the right edge of one row with the left edge
    of the next. A grid with ``N <= k`` regions is returned as is. Written as a matrix product, so it exports to
    ONNX.

    Raises:
        ValueError: ``grid`` does not have ``N`` cells.
    """
    n = regions.shape[1]
    if n <= k:
        return regions, mask
    h, w = (1, n) if grid is None else (int(grid[0]), int(grid[1]))
    if h * w != n:
        raise ValueError(f"the image grid {h}×{w} has {h * w} cells, but the encoder returned {n} regions")
    kh, kw = pooled_grid((h, w), k)
    rows, cols = _bins(h, kh, regions.device, regions.dtype), _bins(w, kw, regions.device, regions.dtype)
    bins = (rows[:, None, :, None] * cols[None, :, None, :]).reshape(kh * kw, n)  # (K, N): rectangle of each region
    m = mask.to(regions.dtype).unsqueeze(-1)  # (B, N, 1)
    count = bins @ m  # (B, K, 1): valid cells per region
    pooled = (bins @ (regions * m)) / count.clamp_min(1.0)
    return pooled, count.squeeze(-1) > 0


@FUSION_HEADS.register("early_fusion")
class EarlyFusionHead(nn.Module):
    """Image regions as tokens of the text transformer, classified from the joint [CLS] state.

    Args:
        text_encoder: built text encoder with ``supports_joint_encoding`` (owned as a submodule; its transformer
            runs over the joint sequence, so its text features are never cached).
        image_encoder: built image encoder with a region/patch grid (owned as a submodule).
        num_classes: number of logits ``C``.
        num_image_tokens: at most this many image tokens ``K``; larger grids are pooled to at most ``K`` regions
            in 2-D (:func:`pool_regions`).
        hidden: width of the classifier's hidden layer; 0 for a single linear layer (as in MMBT).
        dropout: dropout on the image tokens and in the classifier.
    """

    uses_text: ClassVar[TextUse] = "tokens"
    uses_image: ClassVar[ImageUse] = "grid"

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        num_classes: int,
        num_image_tokens: int = 16,
        hidden: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        check_positive("num_image_tokens", num_image_tokens)
        check_hidden(hidden)
        check_dropout(dropout)
        self.text_encoder = require_encoder("early_fusion", "text", text_encoder)
        self.image_encoder = require_encoder("early_fusion", "image", image_encoder)
        if not getattr(text_encoder, "supports_joint_encoding", False):
            from mmfuse.encoders.text import JOINT_MODEL_TYPES

            model_type = getattr(text_encoder, "model_type", None)
            what = f"{type(text_encoder).__name__}" + (f" (model type {model_type!r})" if model_type else "")
            raise ValueError(
                f"early_fusion runs the text transformer over text and image tokens together, but the text encoder "
                f"{getattr(text_encoder, 'name', '')!r}, a {what}, does not support joint encoding; use a text model "
                f"of type {', '.join(JOINT_MODEL_TYPES)} (e.g. minilm, mpnet), or another head (concat, align, "
                f"cross, cross_attention)"
            )
        self.num_image_tokens = num_image_tokens
        width = sequence_dim(text_encoder)  # the transformer's hidden size
        self.image_proj = nn.Linear(sequence_dim(image_encoder), width)
        self.image_pos = nn.Parameter(torch.randn(num_image_tokens, width) * 0.02)  # one per image token slot
        self.image_type = nn.Parameter(torch.randn(width) * 0.02)
        self.text_type = nn.Parameter(torch.zeros(width))
        self.image_norm = nn.LayerNorm(width)
        self.image_dropout = nn.Dropout(dropout)
        self.classifier = mlp_classifier(width, num_classes, hidden, dropout)

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)`` and ``fused`` ``(B, H)``, the joint [CLS] state (H: text hidden size)."""
        if inputs.text_inputs is None:
            raise ValueError(
                "early_fusion runs the text transformer itself and needs raw text_inputs (token ids); "
                "cached text_features cannot stand in for them"
            )
        image = encode_image(self.image_encoder, inputs)
        if image.sequence is None:
            raise ValueError(
                "early_fusion needs an image region/patch grid, but the image encoder returned none; "
                "use an encoder with a grid, or a pooled head (concat, align, cross)"
            )
        regions = image.sequence  # (B, N, d_reg)
        b, n = regions.shape[:2]
        region_mask = image.mask if image.mask is not None else regions.new_ones(b, n, dtype=torch.bool)
        if inputs.image_present is not None:  # an absent image gives no tokens at all; text keeps rows non-empty
            region_mask = region_mask & inputs.image_present[:, None]
        regions, region_mask = pool_regions(regions, region_mask, self.num_image_tokens, image.grid)  # K <= cap
        k = regions.shape[1]

        text_embeds = self.text_encoder.embed_tokens(inputs.text_inputs) + self.text_type  # (B, T, H), [CLS] at 0
        image_embeds = self.image_proj(regions) + self.image_pos[:k] + self.image_type  # (B, K, H)
        image_embeds = self.image_dropout(self.image_norm(image_embeds))
        text_mask = inputs.text_inputs["attention_mask"].bool()  # (B, T)

        # (B, T + K, H): [CLS] text … [SEP], image tokens, text padding (see the module docstring)
        joint, joint_mask = place_after_text(text_embeds, text_mask, image_embeds.to(text_embeds.dtype), region_mask)
        states = self.text_encoder.encode_embeddings(joint, joint_mask)  # (B, T + K, H)
        fused = states[:, 0]  # [CLS]
        logits, embedding = classify(self.classifier, fused)
        return FusionOutput(logits=logits, fused=fused, embedding=embedding)
