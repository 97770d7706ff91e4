"""The fusion-head registry and :func:`build_head`, the one way the engine, CLI and server build a head.

A head's hyperparameters are the keyword arguments of its ``__init__`` (:func:`head_params`);
:func:`check_head_params` is the one check of a given set of them, run by :func:`build_head` and by the config's
``model.head`` section when a config is loaded (:mod:`mmfuse.config.schema`), so a bad one fails before any encoder is
built and reads the same either way.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from mmfuse._registry import Registry, did_you_mean
from mmfuse.encoders.base import ImageEncoder, TextEncoder

FUSION_HEADS: Registry[type[nn.Module]] = Registry("fusion head")

# Constructor arguments build_head fills itself; everything else a head's __init__ takes is a hyperparameter.
_BUILD_ARGS = ("self", "text_encoder", "image_encoder", "num_classes", "classes")


def head_params(name: str) -> dict[str, Any]:
    """Hyperparameters of head ``name`` with their defaults, e.g. ``{"hidden": 256, "dropout": 0.1, ...}``."""
    sig = inspect.signature(FUSION_HEADS.get(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if p.name not in _BUILD_ARGS}


def check_head_params(name: str, params: Mapping[str, Any]) -> None:
    """Refuses hyperparameters head ``name`` does not take, and values of the wrong kind: true/false where the
    default is a bool, a number where it is a number. Ranges (``dropout`` in [0, 1), ``num_heads`` dividing ``dim``)
    are each head's own ``__init__``'s to check.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the known heads).
        ValueError: an unknown hyperparameter (the message lists the allowed ones with their defaults) or a value of
            the wrong kind (the message names the key and its default).
    """
    allowed = head_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "(none)"
        hint = "".join(did_you_mean(k, allowed, n=1, of=len(unknown) > 1) for k in unknown)
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} in params of head {name!r}; "
            f"allowed (defaults): {listed}{hint}"
        )
    for key, value in params.items():
        default = allowed[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ValueError(
                f"params.{key} of head {name!r} must be true or false (default {default!r}), got {value!r}"
            )
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"params.{key} of head {name!r} must be a number (default {default!r}), got {value!r}")


def build_head(
    name: str,
    *,
    text_encoder: TextEncoder | None,
    image_encoder: ImageEncoder | None,
    num_classes: int,
    classes: Sequence[str] | None = None,
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
        classes: the class names in logit order, for a head that reads them (``zero_shot``'s prompts); others
            ignore them.
        **params: the head's hyperparameters (see :func:`head_params`); unknown ones and values of the wrong kind
            raise (:func:`check_head_params`).

    Raises:
        UnknownNameError: ``name`` is not registered (a ``ValueError``; the message lists the known heads).
        ValueError: an unknown hyperparameter (the message lists the allowed ones), a value of the wrong kind or
            out of range, or a missing encoder for a modality the head reads.
    """
    cls = FUSION_HEADS.get(name)
    check_head_params(name, params)
    if cls.uses_text is None and not getattr(cls, "needs_text_tower", False):
        text_encoder = None
    if cls.uses_image is None:
        image_encoder = None
    if "classes" in inspect.signature(cls.__init__).parameters:
        params = {**params, "classes": list(classes) if classes is not None else None}
    return cls(text_encoder=text_encoder, image_encoder=image_encoder, num_classes=num_classes, **params)
