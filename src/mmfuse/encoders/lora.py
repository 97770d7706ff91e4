"""LoRA adapters on a Hugging Face encoder, through ``peft``: :func:`add_lora`.

LoRA (Hu et al., 2021) leaves the pretrained weights frozen and learns a low-rank update ``B·A`` (rank ``r``, scaled
by ``alpha / r``) beside chosen linear or convolution layers. :func:`add_lora` injects the adapters into the
encoder's transformers model in place (``peft.inject_adapter_in_model``: the module tree keeps its names and the
encoder keeps working as before, joint encoding included), freezes every base weight and leaves only the adapters
trainable. A LoRA encoder is therefore not frozen (its outputs change as it trains, so they are never cached), and
a checkpoint stores only its adapter weights (:func:`is_adapter_key`); loading rebuilds the base from its name and
adds fresh adapters before reading them back.

Which encoders: those that hold a transformers model in ``encoder.model`` (every Hugging Face text and image
encoder: BERT family, MiniLM, MPNet, CLIP vision, ResNet, ...). EfficientNet-Lite is not a transformers model and is
refused. Without ``target``, the layers adapted are :data:`DEFAULT_TARGETS` for the model type (the attention
query and value projections of transformers, the convolutions of a ResNet), else peft's own defaults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mmfuse.encoders.base import Encoder

__all__ = ["DEFAULT_TARGETS", "LoraError", "add_lora", "base_weights_hash", "is_adapter_key", "lora_settings"]

DEFAULT_TARGETS: dict[str, list[str]] = {
    # attention query and value projections, as in the LoRA paper
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "deberta-v2": ["query_proj", "value_proj"],
    "modernbert": ["Wqkv"],
    "clip": ["q_proj", "v_proj"],
    "clip_text_model": ["q_proj", "v_proj"],
    "clip_vision_model": ["q_proj", "v_proj"],
    "siglip": ["q_proj", "v_proj"],
    "siglip_text_model": ["q_proj", "v_proj"],
    "siglip_vision_model": ["q_proj", "v_proj"],
    "vit": ["query", "value"],
    "deit": ["query", "value"],
    "dinov2": ["query", "value"],
    "swin": ["query", "value"],
    # convolutional backbones: every convolution of the residual blocks (and the stem)
    "resnet": ["convolution"],
    "convnext": ["pwconv1", "pwconv2"],
}
"""Model type -> the names (suffixes) of the layers LoRA adapts by default."""

_ADAPTER_MARK = "lora_"  # peft names adapter weights ``...<layer>.lora_A.default.weight`` / ``lora_B`` / ...


class LoraError(ValueError):
    """LoRA cannot be added to this encoder, or its settings do not fit the model."""


def is_adapter_key(name: str) -> bool:
    """Whether a state-dict entry is a LoRA adapter weight (what a checkpoint of a LoRA encoder stores)."""
    return _ADAPTER_MARK in name


def lora_settings(encoder: nn.Module) -> dict[str, Any] | None:
    """The LoRA settings of an encoder (``r``, ``alpha``, ``dropout``, ``target``), or ``None`` without LoRA."""
    return getattr(encoder, "lora", None)


def base_weights_hash(encoder: nn.Module, *, legacy: bool = False) -> str:
    """SHA-256 of the encoder's weights without its adapters: the pretrained base a LoRA checkpoint was trained on,
    which loading rebuilds from the encoder's name and must find unchanged.

    ``legacy``: the hash as checkpoints saved before the encoder's ``legacy_state_aliases`` recorded it, with each
    aliased weight also under its old name (e.g. a text encoder's layers under ``_layers.`` too)."""
    state = dict(encoder.state_dict())
    aliases = getattr(encoder, "legacy_state_aliases", None) if legacy else None
    for old, new in (aliases() if aliases is not None else {}).items():
        state.update({old + k[len(new) :]: v for k, v in list(state.items()) if k.startswith(new)})
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        if is_adapter_key(name):
            continue
        data = t.detach().to("cpu").contiguous()
        # peft moves an adapted layer's own weights to ``<layer>.base_layer.weight``: hash them under the plain name
        h.update(f"{name.replace('.base_layer.', '.')}|{data.dtype}|{tuple(data.shape)}|".encode())
        if data.numel():
            h.update(data.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _supported() -> str:
    return (
        "LoRA works on the Hugging Face encoders: text encoders (minilm, mpnet, BERT-family folders and hub ids) and "
        "image encoders built on transformers (CLIP vision, ResNet)"
    )


def add_lora(
    encoder: Encoder,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target: Sequence[str] | None = None,
) -> Encoder:
    """Injects LoRA adapters into ``encoder``'s transformers model, in place; only the adapters stay trainable.

    Args:
        encoder: a Hugging Face encoder (``encoder.model`` a transformers ``PreTrainedModel``).
        r: the adapters' rank.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.
        target: names (suffixes) of the layers to adapt; ``None``: :data:`DEFAULT_TARGETS` of the model type, else
            peft's defaults for it.

    Returns:
        ``encoder``, with ``encoder.lora`` set to the settings used.

    Raises:
        LoraError: not a Hugging Face encoder, LoRA added twice, no default target for the model type, or a
            ``target`` that names no layer of the model (the message lists some that exist).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:  # pragma: no cover - the extra is installed in CI
        raise LoraError("LoRA needs the peft package; install it with `pip install 'mmfuse[lora]'`") from None
    from transformers import PreTrainedModel

    model = getattr(encoder, "model", None)
    if not isinstance(model, PreTrainedModel):
        raise LoraError(f"cannot add LoRA to {type(encoder).__name__} {getattr(encoder, 'name', '')!r}: {_supported()}")
    if lora_settings(encoder) is not None:
        raise LoraError(f"encoder {encoder.name!r} has LoRA adapters already")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise LoraError(f"lora.r must be an int >= 1 (the adapters' rank, e.g. 8), got {r!r}")
    model_type = getattr(model.config, "model_type", None)
    if target is None:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        target = DEFAULT_TARGETS.get(model_type) or PEFT_DEFAULTS.get(model_type)
        if target is None:
            raise LoraError(
                f"no default LoRA target layers for model type {model_type!r}; set lora.target to the names of its "
                f"linear or convolution layers, e.g. {_layer_names(model)[:6]}"
            )
    targets = [str(t) for t in target]
    if not targets:
        raise LoraError("lora.target is empty; name at least one layer, or leave it out for the default")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    encoder.requires_grad_(False)
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:
        raise LoraError(
            f"lora.target {targets} does not fit {model_type!r} model {encoder.name!r} ({str(e).splitlines()[0]}); "
            f"its adaptable layers include {_layer_names(model)[:8]}"
        ) from None
    for name, p in encoder.named_parameters():
        p.requires_grad_(is_adapter_key(name))
    encoder.lora = {"r": r, "alpha": float(alpha), "dropout": float(dropout), "target": targets}
    encoder.train(encoder.training)
    return encoder


def _layer_names(model: nn.Module) -> list[str]:
    """Distinct last names of the model's linear and convolution layers (what ``target`` may name)."""
    names: dict[str, None] = {}
    for full, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(module).__name__ == "Conv1D":
            names.setdefault(full.rsplit(".", 1)[-1], None)
    return list(names)
