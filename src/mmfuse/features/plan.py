"""The feature plan: how a model gets each modality, decided once per model.

For each modality a model reads, either the model runs its encoder on raw inputs (token ids, pixels) or the outputs
of its frozen encoder are computed once per dataset and looked up by row. :func:`plan_features` decides which, and
:class:`FeaturePlan` is the one place the rest of the code asks: :meth:`FeaturePlan.precomputes`,
:meth:`FeaturePlan.reads_raw`, :meth:`FeaturePlan.reads`, :meth:`FeaturePlan.needs_sequence` and
:attr:`FeaturePlan.needs_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from mmfuse.encoders.base import Encoder

MODALITIES = ("text", "image")

_PRECOMPUTED = ("pooled", "sequence", "grid")  # what a head can read of a frozen encoder's outputs, stored once


@dataclass(frozen=True)
class FeaturePlan:
    """How the model gets each modality during training and evaluation.

    Attributes:
        text: ``raw`` (the model runs the text encoder on token ids: it is trained, or the head reads ``tokens``),
            ``pooled`` / ``sequence`` (features of the frozen encoder, computed once), or ``None`` (no text).
        image: ``raw`` (the model runs the image encoder on pixels), ``pooled`` / ``grid`` (precomputed), or
            ``None`` (no image).
    """

    text: Literal["raw", "pooled", "sequence"] | None
    image: Literal["raw", "pooled", "grid"] | None

    def mode(self, modality: str) -> str | None:
        """``raw``, ``pooled``, ``sequence``, ``grid`` or ``None`` (absent) for ``modality``.

        Raises:
            ValueError: ``modality`` is not one of :data:`MODALITIES`.
        """
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
        return getattr(self, modality)

    def reads(self, modality: str) -> bool:
        """Whether the model reads ``modality`` at all (raw or precomputed)."""
        return self.mode(modality) is not None

    def reads_raw(self, modality: str) -> bool:
        """Whether the model runs its encoder for ``modality`` on raw inputs (token ids, pixels)."""
        return self.mode(modality) == "raw"

    def precomputes(self, modality: str) -> bool:
        """Whether the features of ``modality`` are computed once per dataset (and looked up by row)."""
        return self.mode(modality) in _PRECOMPUTED

    def needs_sequence(self, modality: str) -> bool:
        """Whether the precomputed features of ``modality`` keep the token sequence / region grid."""
        return self.mode(modality) in ("sequence", "grid")

    @property
    def needs_pixels(self) -> bool:
        """Whether batches carry decoded pixels (the model runs its image encoder)."""
        return self.reads_raw("image")

    @property
    def precomputed(self) -> int:
        """How many modalities get precomputed features (what a feature pass's progress counts per example)."""
        return sum(self.precomputes(m) for m in MODALITIES)


def encoders_of(model: nn.Module) -> dict[str, tuple[str, Encoder]]:
    """``modality -> (state-dict prefix, encoder)`` for each encoder the model owns."""
    found: dict[str, tuple[str, Encoder]] = {}
    for modality in MODALITIES:
        encoder = getattr(model, f"{modality}_encoder", None)
        if encoder is None:
            continue
        for name, module in model.named_modules():
            if module is encoder:
                found[modality] = (f"{name}." if name else "", encoder)
                break
    return found


def plan_features(model: nn.Module, *, precompute: bool = True) -> FeaturePlan:
    """Which encoder outputs can be computed once: those of fully frozen encoders whose pooled, sequence or grid
    output the head reads (never ``tokens``, never a fine-tuned encoder). An encoder that reads features by example
    id (``precomputed``) is always looked up this way, even with ``precompute=False`` (it has nothing to run).

    Raises:
        ValueError: the head reads what a precomputed encoder cannot give (``tokens``).
    """
    encoders = encoders_of(model)
    uses = {"text": getattr(model, "uses_text", None), "image": getattr(model, "uses_image", None)}
    plan: dict[str, Any] = {}
    for modality in MODALITIES:
        use = uses[modality]
        if use is None or modality not in encoders:
            plan[modality] = None
        elif use in _PRECOMPUTED and encoders[modality][1].is_frozen and (precompute or _by_id(encoders[modality][1])):
            plan[modality] = use
        elif _by_id(encoders[modality][1]):
            raise ValueError(
                f"the head reads the {modality} encoder's {use!r}, which a precomputed {modality} encoder cannot "
                "give (it has features, not tokens or pixels); use a head that reads pooled or sequence features"
            )
        else:
            plan[modality] = "raw"
    return FeaturePlan(**plan)


def _by_id(encoder: Encoder) -> bool:
    return bool(getattr(encoder, "reads_example_ids", False))
