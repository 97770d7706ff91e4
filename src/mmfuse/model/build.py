"""From a validated :class:`~mmfuse.config.ModelConfig` to a model, and what checkpoints and the engine need to
know about it.

The model is the fusion head (which owns its encoders). Besides building it, this module keeps frozen encoders in
eval mode and describes each encoder for checkpoints. Which encoder outputs are computed once per dataset is the
feature plan's question (:mod:`mmfuse.features.plan`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from torch import nn

from mmfuse.config import ConfigError, EncoderConfig, ModelConfig
from mmfuse.encoders.base import Encoder
from mmfuse.features.plan import encoders_of


def build_encoder(modality: str, cfg: EncoderConfig) -> Encoder:
    """Builds and freezes one encoder as configured.

    Raises:
        ConfigError: the builder refused the name or an option (the message names ``model.<modality>_encoder``).
        FileNotFoundError: a local encoder folder that does not exist.
    """
    from mmfuse.encoders import build_image_encoder, build_text_encoder

    builder = build_text_encoder if modality == "text" else build_image_encoder
    key = f"model.{modality}_encoder"
    try:
        encoder = builder(cfg.name, **cfg.options)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{key}.name: {e}") from e
    except TypeError as e:  # an unexpected keyword option
        raise ConfigError(f"{key}.options: {e}") from e
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from e
    return _configure(modality, cfg, encoder)


def build_two_tower_encoders(name: str, text: EncoderConfig, image: EncoderConfig) -> tuple[Encoder, Encoder]:
    """Both encoders of one CLIP / SigLIP checkpoint (``model.encoder``), loaded once, each frozen / adapted as its
    own section says.

    Raises:
        ConfigError: a checkpoint without both towers, a bad option (naming ``model.encoder``).
        FileNotFoundError: a local folder that does not exist.
    """
    from mmfuse.encoders.two_towers import build_two_towers

    try:
        text_encoder, image_encoder = build_two_towers(name, text_options=text.options, image_options=image.options)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"model.encoder: {e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.encoder: {e}") from e
    return _configure("text", text, text_encoder), _configure("image", image, image_encoder)


def _configure(modality: str, cfg: EncoderConfig, encoder: Encoder) -> Encoder:
    """Freezes (or unfreezes) ``encoder``, adds its LoRA adapters and sets its feature ``backend``, as ``cfg``
    says."""
    key = f"model.{modality}_encoder"
    encoder.backend = cfg.backend
    if cfg.freeze:
        try:
            encoder.freeze(trainable_top_k=cfg.trainable_top_k)
        except ValueError as e:
            raise ConfigError(f"{key}.trainable_top_k: {e}") from e
    else:
        encoder.requires_grad_(True)
    if cfg.lora is not None:  # adapters on the frozen base (the schema refuses lora with freeze: false or top-k)
        from mmfuse.encoders.lora import add_lora

        try:
            add_lora(encoder, **cfg.lora.model_dump())
        except ValueError as e:
            raise ConfigError(f"{key}.lora: {e}") from e
    return encoder


def build_model(cfg: ModelConfig, num_classes: int, classes: Sequence[str] | None = None) -> nn.Module:
    """Builds the encoders the head reads (only those) and the head around them; ``classes`` (the class names in
    logit order) go to a head that reads them (``zero_shot``).

    Raises:
        ConfigError: a bad encoder name/option or head parameter value (naming its key path).
        FileNotFoundError: a local encoder folder that does not exist.
    """
    from mmfuse.fusion import FUSION_HEADS, build_head

    cls = FUSION_HEADS.get(cfg.head.name)
    encoders: dict[str, Encoder | None] = {"text": None, "image": None}
    needs = {"text": cls.uses_text is not None or getattr(cls, "needs_text_tower", False), "image": cls.uses_image}
    if cfg.encoder is not None and needs["text"] and needs["image"] and cfg.text_encoder and cfg.image_encoder:
        encoders["text"], encoders["image"] = build_two_tower_encoders(cfg.encoder, cfg.text_encoder, cfg.image_encoder)
    else:
        for modality in ("text", "image"):
            spec = getattr(cfg, f"{modality}_encoder")
            if needs[modality] and spec is not None:
                encoders[modality] = build_encoder(modality, spec)
    try:
        return build_head(
            cfg.head.name,
            text_encoder=encoders["text"],  # type: ignore[arg-type]
            image_encoder=encoders["image"],  # type: ignore[arg-type]
            num_classes=num_classes,
            classes=classes,
            **cfg.head.params,
        )
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.head ({cfg.head.name}): {e}") from e


def set_train_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, but fully frozen encoders always stay in eval mode: a frozen encoder must not
    apply dropout or update batch-norm statistics."""
    model.train(training)
    if training:
        for _, encoder in encoders_of(model).values():
            if encoder.is_frozen:
                encoder.eval()


def fingerprint(identity: dict[str, Any]) -> str:
    """A short hash of an encoder's ``cache_identity()``."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encoder_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per encoder: name, whether it is frozen (and so left out of checkpoints), identity and its fingerprint; for a
    LoRA encoder also its settings and the hash of its base weights (``lora``, ``base_weights``), which loading checks
    the rebuilt base against."""
    from mmfuse.encoders.lora import base_weights_hash, lora_settings

    records = {}
    for modality, (prefix, encoder) in encoders_of(model).items():
        identity = encoder.cache_identity()
        records[modality] = {
            "name": getattr(encoder, "name", type(encoder).__name__),
            "prefix": prefix,
            "frozen": encoder.is_frozen,
            "identity": identity,
            "fingerprint": fingerprint(identity),
        }
        if (lora := lora_settings(encoder)) is not None:
            records[modality].update(lora=lora, base_weights=base_weights_hash(encoder))
    return records
