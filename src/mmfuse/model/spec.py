"""What a saved model is, apart from the run that trained it: :class:`ModelSpec`.

A checkpoint's ``meta.json`` holds the spec (format version 2): the encoders and head (a
:class:`~mmfuse.config.ModelConfig`), the class names in logit order, the tuned threshold, the training-label counts
(for the baselines of an evaluation), the calibration temperature and, added at save time, each encoder's identity
(its preprocessing, tokenizer and weights) with a fingerprint. That is everything needed to rebuild the model and
turn its logits into labels; the training config (data, optimizer, loop) stays in the run folder's ``config.yaml``.

Format version 1 stored the whole training config under ``config``; :meth:`ModelSpec.from_meta` reads both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mmfuse.config import ConfigError, ModelConfig

__all__ = ["ModelSpec", "head_name"]


@dataclass(frozen=True)
class ModelSpec:
    """A model's self-description.

    Attributes:
        model: encoders and fusion head.
        classes: class names in logit order (the label map).
        threshold: the tuned decision threshold on P(class 1) for binary tasks (on the calibrated probabilities when
            the model has a ``temperature``); ``None``: argmax.
        train_class_counts: examples per class in the training split (for the majority / random baselines).
        encoders: per modality, the encoder's record (name, frozen, identity with its preprocessing, fingerprint),
            as the checkpoint recorded it; empty before the model is saved.
        temperature: the calibration temperature fitted on validation (``train.calibrate``): probabilities are
            ``softmax(logits / temperature)``; ``None``: not calibrated (as ``1``).
    """

    model: ModelConfig
    classes: list[str]
    threshold: float | None = None
    train_class_counts: list[int] | None = None
    encoders: dict[str, dict[str, Any]] = field(default_factory=dict)
    temperature: float | None = None

    @property
    def head(self) -> str:
        return self.model.head.name

    def encoder_names(self) -> dict[str, str | None]:
        """Modality -> encoder name (``None`` where the model has no encoder of that modality)."""
        return {
            m: (enc.name if (enc := getattr(self.model, f"{m}_encoder")) is not None else None)
            for m in ("text", "image")
        }

    def to_meta(self) -> dict[str, Any]:
        """The spec's part of ``meta.json`` (the encoder records are added by the checkpoint writer)."""
        return {
            "model": self.model.model_dump(mode="json"),
            "classes": list(self.classes),
            "threshold": self.threshold,
            "train_class_counts": self.train_class_counts,
            "temperature": self.temperature,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], *, source: str = "checkpoint") -> ModelSpec:
        """Reads a checkpoint's metadata: format 2 (``model``) or format 1 (the whole config under ``config``).

        Raises:
            ConfigError: no model description, or one that does not validate (naming ``source``).
        """
        if "model" in meta:
            model = meta["model"]
        elif isinstance(meta.get("config"), dict) and "model" in meta["config"]:
            model = meta["config"]["model"]
        else:
            raise ConfigError(f"{source} has no model description (neither 'model' nor 'config.model' in its metadata)")
        try:
            model_config = ModelConfig.model_validate(model)
        except ValueError as e:
            raise ConfigError(f"{source}: its model description does not validate: {e}") from None
        classes = meta.get("classes")
        if not isinstance(classes, list) or len(classes) < 2:
            raise ConfigError(f"{source}: its metadata names no classes (at least 2), got {classes!r}")
        counts = meta.get("train_class_counts")
        temperature = meta.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ConfigError(f"{source}: its calibration temperature must be a positive number, got {temperature!r}")
        return cls(
            model=model_config,
            classes=[str(c) for c in classes],
            threshold=meta.get("threshold"),
            train_class_counts=[int(c) for c in counts] if counts is not None else None,
            encoders=dict(meta.get("encoders") or {}),
            temperature=float(temperature) if temperature is not None else None,
        )


def head_name(model: nn.Module) -> str:
    """The registered name of ``model``'s fusion head class (its class name when it is not registered)."""
    from mmfuse.fusion import FUSION_HEADS

    for name in FUSION_HEADS.names():
        if type(model) is FUSION_HEADS.get(name):
            return name
    return type(model).__name__
