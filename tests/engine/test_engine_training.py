"""The training loop: resume equals an uninterrupted run, determinism, divergence, checkpoint mismatches, early
stopping and gradient accumulation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_support import FakeText, make_config
from safetensors.torch import load_file

import mmfuse.encoders
from mmfuse.engine import trainer as trainer_module
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.engine.run_dir import RunDir
from mmfuse.engine.trainer import NonFiniteLossError, Trainer
from mmfuse.features import FeatureStore
from mmfuse.model.checkpoint import CheckpointError

# timing fields differ between identical runs; everything else in a metrics record must not
_TIMING = ("seconds", "examples_per_s")

# a model that trains the top layer of its text encoder (dropout in the encoder and the head: the RNG matters),
# and one whose encoders are frozen (features computed once, only the head trains)
_TRAINABLE = {"model": {"text_encoder": {"name": "fake-text", "freeze": True, "trainable_top_k": 1}}}
_FROZEN: dict[str, Any] = {}


class Interrupted(Exception):
    pass


def fit(cfg, splits, **kwargs) -> MultimodalClassifier:
    return MultimodalClassifier(cfg).fit(splits["train"], splits["val"], **kwargs)


def records(run: Path) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in _TIMING} for r in RunDir(run).history()
    ]  # fmt: skip


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / which / "model.safetensors"))


# Resume, train-longer and same-seed runs are replays: the same operations on the same data in the same order, so
# they are bitwise equal (0 apart measured, with torch's vector and scalar kernels); the tolerances only absorb a
# BLAS that picks another code path for another memory alignment. Comparing two *different* computations of the same
# result (grad accumulation, two processes) needs more; see those tests.
def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7, msg=lambda m, k=key: f"{k}: {m}")


def assert_same_records(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra["epoch"] == rb["epoch"] and ra["step"] == rb["step"] and ra["best"] == rb["best"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6, abs=1e-9)
        assert ra["val"] == pytest.approx(rb["val"], rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("model", [_FROZEN, _TRAINABLE], ids=["frozen", "trainable"])
def test_resume_after_interruption_equals_uninterrupted(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, model: dict
) -> None:
    sections = {**model, "train": {"epochs": 4}, "optim": {"schedule": "cosine", "warmup_ratio": 0.2}}
    whole = make_config(synthetic_root, tmp_path, run={"name": "whole"}, **sections)
    fit(whole, synthetic_splits)

    def interrupt(record: dict[str, Any]) -> None:
        if record["epoch"] == 2:
            raise Interrupted

    parts = make_config(synthetic_root, tmp_path, run={"name": "parts"}, **sections)
    with pytest.raises(Interrupted):
        fit(parts, synthetic_splits, callbacks=[interrupt])
    assert len(RunDir(tmp_path / "parts").history()) == 2
    resumed = fit(parts, synthetic_splits, resume=tmp_path / "parts")

    assert_same_records(records(tmp_path / "whole"), records(tmp_path / "parts"))
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "parts"))
    assert_same_weights(weights(tmp_path / "whole", "best"), weights(tmp_path / "parts", "best"))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]


def test_train_longer_with_constant_schedule_equals_one_run(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    """`train.epochs=2`, then `--resume RUN train.epochs=4`: the same as 4 epochs at once when the schedule does not
    depend on the run's length."""
    sections = {**_TRAINABLE, "optim": {"schedule": "constant"}}
    fit(make_config(synthetic_root, tmp_path, run={"name": "whole"}, train={"epochs": 4}, **sections), synthetic_splits)
    fit(make_config(synthetic_root, tmp_path, run={"name": "parts"}, train={"epochs": 2}, **sections), synthetic_splits)
    longer = make_config(synthetic_root, tmp_path, run={"name": "parts"}, train={"epochs": 4}, **sections)
    fit(longer, synthetic_splits, resume=tmp_path / "parts")
    assert_same_records(records(tmp_path / "whole"), records(tmp_path / "parts"))
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "parts"))


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_metrics_other_seed_differs(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    store = FeatureStore()  # starts cold: the first run computes the image features, the others find them

    def run(name: str, seed: int) -> Path:
        cfg = make_config(synthetic_root, tmp_path, run={"name": name}, train={"seed": seed}, **_TRAINABLE)
        MultimodalClassifier(cfg, source=store).fit(synthetic_splits["train"], synthetic_splits["val"])
        return tmp_path / name

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert store.hits > 0
    assert_same_records(records(a), records(b))
    assert_same_weights(weights(a), weights(b))
    assert [r["train_loss"] for r in records(a)] != [r["train_loss"] for r in records(c)]
    wa, wc = weights(a), weights(c)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


# ------------------------------------------------------------------------------------------------ divergence


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = Trainer._loss

    def loss_nan_in_epoch_2(self: Trainer, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        loss, *sums = real_loss(self, batch)
        return (loss * float("nan") if self.state.epoch >= 1 else loss, *sums)

    monkeypatch.setattr(Trainer, "_loss", loss_nan_in_epoch_2)
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 3})
    with pytest.raises(NonFiniteLossError) as info:
        fit(cfg, synthetic_splits)
    run = tmp_path / "run"
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and str(run / "checkpoints" / "last") in message
    assert "optim.lr" in message
    assert [r["epoch"] for r in RunDir(run).history()] == [1]
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["epoch"] == 1
    assert all(torch.isfinite(w).all() for w in weights(run).values())
    summary = RunDir(run).read_summary()
    assert summary["status"] == "diverged" and summary["error"] == message
    # the kept checkpoint loads and predicts
    clf = MultimodalClassifier.load(run, checkpoint="last")
    assert torch.isfinite(torch.from_numpy(clf.predict_proba(synthetic_splits["val"]))).all()


def test_inf_loss_in_the_first_epoch_says_no_checkpoint(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inf = torch.tensor(float("inf"), requires_grad=True)
    monkeypatch.setattr(Trainer, "_loss", lambda self, batch: (inf, inf.detach(), torch.tensor(1.0)))
    with pytest.raises(NonFiniteLossError, match=r"became inf at epoch 1.*no checkpoint was written yet"):
        fit(make_config(synthetic_root, tmp_path), synthetic_splits)


# ------------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def trained_run(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path) -> Path:
    fit(make_config(synthetic_root, tmp_path, train={"epochs": 1}), synthetic_splits)
    return tmp_path / "run"


def test_resume_with_another_head_is_refused(trained_run: Path, synthetic_root: Path, synthetic_splits: dict) -> None:
    cfg = make_config(synthetic_root, trained_run.parent, train={"epochs": 2}, model={"head": "cross_attention"})
    with pytest.raises(CheckpointError, match=r"fusion head 'concat', but the config asks for 'cross_attention'"):
        fit(cfg, synthetic_splits, resume=trained_run)


def test_resume_with_other_head_params_is_refused(
    trained_run: Path, synthetic_root: Path, synthetic_splits: dict
) -> None:
    cfg = make_config(
        synthetic_root,
        trained_run.parent,
        train={"epochs": 2},
        model={"head": {"name": "concat", "params": {"hidden": 8}}},
    )
    with pytest.raises(
        CheckpointError,
        match=r"other shapes .*classifier\.1\.weight: \[256, \d+\] here, \[8, \d+\] in the model.*other head params",
    ):
        fit(cfg, synthetic_splits, resume=trained_run)


def test_resume_with_other_classes_is_refused(trained_run: Path, synthetic_root: Path, synthetic_splits: dict) -> None:
    def relabel(split) -> list:
        return [dataclasses.replace(e, label={"0": "no", "1": "yes"}[e.label]) for e in split.examples]

    cfg = make_config(synthetic_root, trained_run.parent, train={"epochs": 2})
    with pytest.raises(CheckpointError, match=r"classes \['0', '1'\], but the data has \['no', 'yes'\]"):
        MultimodalClassifier(cfg).fit(
            relabel(synthetic_splits["train"]), relabel(synthetic_splits["val"]), resume=trained_run
        )


def test_changed_frozen_encoder_is_refused_at_load(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mmfuse.encoders, "build_text_encoder", lambda name, **options: FakeText(name, seed=7))
    with pytest.raises(CheckpointError, match=r"text encoder 'fake-text' .* differs from the one it was trained with"):
        MultimodalClassifier.load(trained_run)


def test_damaged_checkpoints(trained_run: Path) -> None:
    meta = trained_run / "checkpoints" / "best" / "meta.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        MultimodalClassifier.load(trained_run)
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MultimodalClassifier.load(trained_run)
    (trained_run / "checkpoints" / "last" / "training_state.pt").unlink()
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        MultimodalClassifier.resume(trained_run, ["train.epochs=2"])


def test_training_state_loads_weights_only(trained_run: Path) -> None:
    state = torch.load(trained_run / "checkpoints" / "last" / "training_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "loop"} <= set(state)
    assert state["loop"]["epoch"] == 1


# ------------------------------------------------------------------------------------------------ loop options


def test_a_tie_of_the_selection_metric_keeps_the_epoch_with_the_lower_loss(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUROC or accuracy often reach their maximum early on easy validation data; a later epoch with the same value
    and a lower validation loss is kept (it used to keep the first, less trained one)."""
    scores = iter([(0.5, 0.7), (1.0, 0.5), (1.0, 0.3), (1.0, 0.4)])
    real = trainer_module.validation_metrics

    def scripted(out, classes):
        accuracy, loss = next(scores)
        return {**real(out, classes), "accuracy": accuracy, "loss": loss}

    monkeypatch.setattr(trainer_module, "validation_metrics", scripted)
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 4, "selection_metric": "accuracy"})
    clf = fit(cfg, synthetic_splits)
    assert [r["best"] for r in clf.history] == [True, True, True, False]
    assert clf.summary["best_epoch"] == 3
    assert json.loads((tmp_path / "run" / "checkpoints" / "best" / "meta.json").read_text())["epoch"] == 3


def test_early_stopping_keeps_the_best_epoch(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # best at 2; 3 and 4 do not improve on it (4 ties it with a higher validation loss: no gain)
    scores = iter([(0.5, 0.7), (0.7, 0.6), (0.6, 0.6), (0.7, 0.65), (0.9, 0.5), (0.95, 0.4)])
    real = trainer_module.validation_metrics

    def scripted(out, classes):
        accuracy, loss = next(scores)
        return {**real(out, classes), "accuracy": accuracy, "loss": loss}

    monkeypatch.setattr(trainer_module, "validation_metrics", scripted)
    cfg = make_config(
        synthetic_root, tmp_path, train={"epochs": 6, "early_stopping_patience": 2, "selection_metric": "accuracy"}
    )
    clf = fit(cfg, synthetic_splits)
    assert clf.summary["status"] == "early_stopped"
    assert [r["epoch"] for r in clf.history] == [1, 2, 3, 4]
    assert [r["best"] for r in clf.history] == [True, True, False, False]
    assert clf.summary["best_epoch"] == 2 and clf.summary["best_value"] == 0.7
    assert json.loads((tmp_path / "run" / "checkpoints" / "best" / "meta.json").read_text())["epoch"] == 2
    assert json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 4
    assert_same_weights(weights(tmp_path / "run", "best"), _stored(clf))


def _stored(clf: MultimodalClassifier) -> dict[str, torch.Tensor]:
    from mmfuse.model.checkpoint import stored_state

    return stored_state(clf.model)


@pytest.mark.numerics
def test_grad_accum_equals_the_larger_batch(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two accumulated batches of 8 step the optimizer with the gradient of one batch of 16, as often, at the same
    learning rates.

    What is invariant is each step's gradient (a mean over the same 16 examples, only summed in another order) and
    so, with SGD, the weights: SGD moves them linearly in the gradient, so float rounding stays at rounding size. AdamW
    would not do here: its first steps move every weight by about lr * g / |g|, which turns a rounding difference in a
    tiny gradient into a visible one; with it the two runs' weights differed by 1.2e-5 (AVX2) and 2.0e-5 (torch's
    scalar kernels) on an AMD EPYC, over a 1e-5 tolerance.
    """
    train = synthetic_splits["train"].examples[:64]  # whole batches of 16: no partial accumulation at the end
    no_dropout = {"model": {"head": {"name": "cross_attention", "params": {"dropout": 0.0}}}}  # frozen encoders
    sgd = {"name": "sgd", "lr": 0.1, "schedule": "linear", "warmup_steps": 1}
    steps: dict[str, list[tuple[float, torch.Tensor]]] = {}
    real_build = trainer_module.build_optimizer

    def recording(name: str):
        def build(model, cfg):  # records the learning rate and the (clipped) gradient each step uses
            optimizer = real_build(model, cfg)
            params = [p for group in optimizer.param_groups for p in group["params"]]

            def record(opt, args, kwargs) -> None:
                grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
                steps.setdefault(name, []).append((opt.param_groups[0]["lr"], grad.clone()))

            optimizer.register_step_pre_hook(record)
            return optimizer

        return build

    def run(name: str, batch: int, accum: int) -> Path:
        monkeypatch.setattr(trainer_module, "build_optimizer", recording(name))
        cfg = make_config(
            synthetic_root, tmp_path, run={"name": name}, train={"batch_size": batch, "eval_batch_size": 32},
            optim={**sgd, "grad_accum": accum}, **no_dropout,
        )  # fmt: skip
        MultimodalClassifier(cfg).fit(train, synthetic_splits["val"])
        return tmp_path / name

    big, accumulated = run("big", 16, 1), run("accum", 8, 2)
    assert [r["step"] for r in records(big)] == [r["step"] for r in records(accumulated)] == [4, 8]
    assert len(steps["big"]) == len(steps["accum"]) == 8  # one optimizer step per 16 examples, not per batch of 8
    assert [lr for lr, _ in steps["big"]] == [lr for lr, _ in steps["accum"]]  # the schedule counts optimizer steps
    for (_, g_big), (_, g_accum) in zip(steps["big"], steps["accum"], strict=True):
        # float32 sums of 16 terms in another order: <= 2e-8 apart where the largest entry is 0.03-0.18 (measured,
        # with and without vector kernels), i.e. < 1e-6 of it; 1e-5 of it is a 20x margin, while a gradient not
        # divided by grad_accum is off by 100 % of it
        torch.testing.assert_close(g_accum, g_big, rtol=0, atol=1e-5 * float(g_big.abs().max()))
    wb, wa = weights(big), weights(accumulated)
    for key in wb:
        # SGD: the weights differ by lr times the gradients' rounding differences, summed over 8 steps: <= 6e-8
        # measured (one float32 ulp of a weight near 1); 1e-6 is a 15x margin, far below one wrong update (lr * g,
        # ~1e-3 to 1e-2 here)
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)
