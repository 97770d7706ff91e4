"""The fusion-head registry and :func:`build_head`, the one way the engine, CLI and server build a head."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from mmfuse._registry import Registry
from mmfuse.encoders.base import ImageEncoder, TextEncoder

FUSION_HEADS: Registry[type[nn.Module]] = Registry("fusion head")

# Constructor arguments build_head fills itself; everything else a head's __init__ takes is a hyperparameter.
_BUILD_ARGS = ("self", "text_encoder", "image_encoder", "num_classes")


def head_params(name: str) -> dict[str, Any]:
    """Hyperparameters of head ``name`` with their defaults, e.g. ``{"hidden": 256, "dropout": 0.1, ...}``."""
    sig = inspect.signature(FUSION_HEADS.get(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.name not in _BUILD_ARGS}


def build_head(
    name: str,
    *,
    text_encoder: TextEncoder | None,
    image_encoder: ImageEncoder | None,
    num_classes: int,
    **params: Any,
) -> nn.Module:
    """Builds fusion head ``name`` around already-built encoders.

    The head owns the encoders it reads as submodules. An encoder the head never reads (the image encoder of
    ``text_only``, the text encoder of ``image_only``) is dropped, so one call site can build every head from
    the same pair.

    Args:
        name: a registered head (``FUSION_HEADS.names()``).
        text_encoder: built text encoder, or ``None`` for a head that reads no text.
        image_encoder: built image encoder, or ``None`` for a head that reads no image.
        num_classes: number of logits ``C``.
        **params: the head's hyperparameters (see :func:`head_params`); unknown ones raise.

    Raises:
        UnknownNameError: ``name`` is not registered (a ``ValueError``; the message lists the known heads).
        ValueError: an unknown hyperparameter (the message lists the allowed ones), a bad value, or a missing
            encoder for a modality the head reads.
    """
    cls = FUSION_HEADS.get(name)
    allowed = head_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "(none)"
        raise ValueError(f"unknown hyperparameter(s) {unknown} for fusion head {name!r}; allowed (defaults): {listed}")
    if cls.uses_text is None:
        text_encoder = None
    if cls.uses_image is None:
        image_encoder = None
    return cls(text_encoder=text_encoder, image_encoder=image_encoder, num_classes=num_classes, **params)
