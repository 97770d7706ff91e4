"""Optimizers, parameter groups, LR schedules, class weights and the accelerator settings (cheap unit checks)."""

from __future__ import annotations

import math

import pytest
import torch

from mmfuse.config import ConfigError, ModelConfig, OptimConfig, TrainingConfig
from mmfuse.engine.optim import build_optimizer, build_scheduler, class_weight_tensor, optimizer_steps
from mmfuse.engine.trainer import make_accelerator
from mmfuse.model.build import build_model


@pytest.fixture
def model(fake_encoders) -> torch.nn.Module:
    cfg = ModelConfig.model_validate(
        {"text_encoder": {"name": "fake-text", "trainable_top_k": 1}, "image_encoder": "fake-image", "head": "concat"}
    )
    return build_model(cfg, num_classes=2)


def test_param_groups_lrs_and_decay(model: torch.nn.Module) -> None:
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, encoder_lr=1e-5, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["group"]: g for g in opt.param_groups}
    assert set(groups) == {"head", "head_no_decay", "encoder", "encoder_no_decay"}
    assert groups["head"]["lr"] == 1e-3 and groups["encoder"]["lr"] == 1e-5
    assert groups["head"]["weight_decay"] == 0.1 and groups["head_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in groups["encoder_no_decay"]["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable  # frozen layers stay out
    assert len(trainable) < len(list(model.parameters()))


def test_sgd_and_adam(model: torch.nn.Module) -> None:
    sgd = build_optimizer(model, OptimConfig(name="sgd", momentum=0.8))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    assert type(build_optimizer(model, OptimConfig(name="adam"))) is torch.optim.Adam


@pytest.mark.parametrize(
    ("schedule", "at_end_of_warmup", "halfway", "last"),
    [("constant", 1.0, 1.0, 1.0), ("linear", 1.0, 0.5, 0.1), ("cosine", 1.0, 0.5, (1 + math.cos(math.pi * 0.9)) / 2)],
)
def test_schedules(model: torch.nn.Module, schedule: str, at_end_of_warmup: float, halfway: float, last: float) -> None:
    # 2 warmup steps, then 10 decay steps; lrs[i] is the lr of optimizer step i (before scheduler.step)
    opt = build_optimizer(model, OptimConfig(lr=1.0, schedule=schedule, warmup_steps=2))
    sched = build_scheduler(opt, OptimConfig(lr=1.0, schedule=schedule, warmup_steps=2), total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5)  # linear warmup
    assert lrs[2] == pytest.approx(at_end_of_warmup)
    assert lrs[7] == pytest.approx(halfway)
    assert lrs[11] == pytest.approx(last)


def test_warmup_ratio_and_step_count(model: torch.nn.Module) -> None:
    assert optimizer_steps(batches_per_epoch=9, epochs=3, grad_accum=2) == 15  # a partial accumulation still steps
    cfg = OptimConfig(lr=1.0, schedule="constant", warmup_ratio=0.25)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=8)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_class_weights() -> None:
    labels = [0, 0, 0, 1]
    assert class_weight_tensor("none", labels, ["a", "b"]) is None
    balanced = class_weight_tensor("balanced", labels, ["a", "b"])
    assert balanced.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])  # n / (C * count)
    assert class_weight_tensor([1.0, 3.0], labels, ["a", "b"]).tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"3 weights, but the data has 2 classes \['a', 'b'\]"):
        class_weight_tensor([1.0, 2.0, 3.0], labels, ["a", "b"])
    with pytest.raises(ConfigError, match=r"classes \['c'\] have no training example"):
        class_weight_tensor("balanced", labels, ["a", "b", "c"])


def test_fp16_needs_a_gpu() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        make_accelerator(TrainingConfig(mixed_precision="fp16", device="cpu"), grad_accum=1)
    assert make_accelerator(TrainingConfig(mixed_precision="auto", device="cpu"), 1).mixed_precision == "no"
