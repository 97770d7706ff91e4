"""Small pieces the fusion heads share: the classifier MLP, masked pooling, argument checks."""

from __future__ import annotations

import torch
from torch import nn

from mmfuse.encoders.base import Encoder


def mlp_classifier(in_dim: int, num_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """Dropout → Linear, or, with ``hidden > 0``, Dropout → Linear → GELU → Dropout → Linear.

    Maps ``(B, in_dim)`` to ``(B, num_classes)`` logits.
    """
    if hidden == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` ``(B, N, D)`` over the N positions where ``mask`` ``(B, N)`` is True → ``(B, D)``.

    ``mask=None`` means all positions are valid. A row with no valid position gives zeros, not NaN.
    """
    if mask is None:
        return x.mean(dim=1)
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def sequence_dim(encoder: Encoder) -> int:
    """Size of one ``sequence`` vector (token / region) of ``encoder``; its pooled ``dim`` unless it says otherwise."""
    return int(getattr(encoder, "sequence_dim", encoder.dim))


def check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (2 for binary labels), got {num_classes!r}")


def check_hidden(hidden: int) -> None:
    if not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"hidden must be an int >= 0 (0 = a single linear layer), got {hidden!r}")


def check_dropout(dropout: float) -> None:
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def require_encoder(head: str, modality: str, encoder: Encoder | None) -> Encoder:
    """Returns ``encoder``, or raises when a head that reads ``modality`` got none."""
    if encoder is None:
        raise ValueError(f"fusion head {head!r} reads the {modality}; pass a built {modality}_encoder, not None")
    return encoder


def refuse_encoder(head: str, modality: str, encoder: Encoder | None) -> None:
    """Raises when a unimodal head is handed an encoder for the modality it never reads."""
    if encoder is not None:
        raise ValueError(
            f"fusion head {head!r} does not read the {modality}; pass {modality}_encoder=None "
            f"(build_head drops it for you)"
        )
