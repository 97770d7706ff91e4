"""Optimizer (parameter groups with separate head / encoder learning rates) and the LR schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from transformers import get_scheduler

from mmfuse.config import ConfigError, OptimConfig
from mmfuse.features import encoders_of

_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Up to six groups: head / trainable encoder parameters / LoRA adapters, each with and without weight decay.

    Encoder parameters get ``encoder_lr``, the rest ``lr``; with ``lora_lr`` set, LoRA adapter weights are a group
    of their own at that rate (without it they are encoder parameters, at ``encoder_lr``). Biases and normalization
    weights (1-D parameters) get no weight decay: decaying them only shrinks scales and offsets, which regularizes
    nothing useful.
    """
    from mmfuse.encoders.lora import is_adapter_key

    prefixes = [prefix for prefix, _ in encoders_of(model).values()]
    lrs = {"head": cfg.lr, "encoder": cfg.encoder_lr, "lora": cfg.lora_lr}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((prefix for prefix in prefixes if name.startswith(prefix)), None)
        kind = "head" if prefix is None else "encoder"
        if prefix is not None and cfg.lora_lr is not None and is_adapter_key(name[len(prefix) :]):
            kind = "lora"
        groups.setdefault((kind, p.ndim > 1), []).append(p)
    order = {"head": 0, "encoder": 1, "lora": 2}  # head, then encoder groups: the order before lora_lr existed
    return [
        {
            "params": params,
            "lr": lrs[kind],
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "group": kind + ("" if decay else "_no_decay"),
        }
        for (kind, decay), params in sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1]))
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with momentum over the trainable parameters.

    Raises:
        ConfigError: the model has no trainable parameter.
    """
    groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError("the model has no trainable parameters; unfreeze an encoder or use a head with parameters")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr)


def optimizer_steps(batches_per_epoch: int, epochs: int, grad_accum: int) -> int:
    """Optimizer steps of a whole run (a partial accumulation at an epoch's end still steps)."""
    return math.ceil(batches_per_epoch / grad_accum) * epochs


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then constant, linear decay to 0, or cosine decay to 0 (transformers' schedules)."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total_steps)
    return get_scheduler(
        _SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=min(warmup, total_steps), num_training_steps=total_steps
    )


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Learning rate per group name (``head``, ``encoder``, ``lora``), for the metrics log."""
    out: dict[str, float] = {}
    for group in optimizer.param_groups:
        out.setdefault(str(group.get("group", "head")).removesuffix("_no_decay"), float(group["lr"]))
    return out


def class_weight_tensor(
    setting: str | Sequence[float], train_labels: Sequence[int], classes: Sequence[str]
) -> torch.Tensor | None:
    """The loss's class weights: ``None``, balanced (``n / (C * count)``, sklearn's formula) or the given list.

    Raises:
        ConfigError: a list of the wrong length, or ``balanced`` with a class missing from the training labels.
    """
    num_classes = len(classes)
    if setting == "none":
        return None
    if setting == "balanced":
        labels = np.asarray(train_labels)
        missing = sorted(set(range(num_classes)) - set(labels.tolist()))
        if missing:
            names = [classes[i] for i in missing]
            raise ConfigError(f"train.class_weights=balanced: classes {names} have no training example")
        weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
        return torch.tensor(weights, dtype=torch.float32)
    if len(setting) != num_classes:
        raise ConfigError(
            f"train.class_weights has {len(setting)} weights, but the data has {num_classes} classes "
            f"{list(classes)}; give one weight per class, in that order"
        )
    return torch.tensor(list(setting), dtype=torch.float32)
