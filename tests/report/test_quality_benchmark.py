"""benchmarks/quality.py's choices: record keys stay stable, and the fine-tuned rows' encoder lr is chosen on
validation only (the script trains for hours, so its selection logic is tested here with a fake trainer)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("mmfuse_quality_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def base_trial(quality):
    schedule = "epochs=10,patience=3,batch=32,limit=0"
    return quality.Trial("mvsa_single", "concat", "grid", 3e-4, 0.2, "balanced", seed=0, schedule=schedule)


def test_later_fields_join_the_key_only_when_changed(quality):
    trial = base_trial(quality)
    assert "encoder_lr" not in trial.key and "image_dropout" not in trial.key  # older records keep their keys
    assert trial.key == (
        "class_weights=balanced|dataset=mvsa_single|dropout=0.2|finetune=False|head=concat|hidden=256|"
        "label_smoothing=0.0|lr=0.0003|schedule=epochs=10,patience=3,batch=32,limit=0|seed=0|stage=grid"
    )
    changed = trial.with_(encoder_lr=5e-5)
    assert "encoder_lr=5e-05" in changed.key and changed.slug != trial.slug


class FakeTrainer:
    """Stands in for run_trial: validation macro-F1 from a table keyed by encoder lr, plus a little per seed."""

    def __init__(self, val_by_lr: dict[float, float]):
        self.val_by_lr, self.trials = val_by_lr, []

    def __call__(self, trial, data, source, ledger, args):
        self.trials.append(trial)
        macro_f1 = self.val_by_lr[trial.encoder_lr] + 0.001 * trial.seed
        return {"key": trial.key, "val": {"macro_f1": macro_f1, "accuracy": 0.5}}


def args_for(**overrides):
    args = {
        "finetune_encoder_lr": [2e-5, 5e-5, 1e-4],
        "finetune_seeds": 2,
        "finetune_epochs": 3,
        "finetune_small_grid_heads": [],
    }
    return SimpleNamespace(**{**args, **overrides})


DATA = SimpleNamespace(spec=SimpleNamespace(name="mvsa_single", select="macro_f1"))


def test_finetune_row_keeps_the_encoder_lr_best_on_validation(quality, monkeypatch):
    trainer = FakeTrainer({2e-5: 0.70, 5e-5: 0.73, 1e-4: 0.71})
    monkeypatch.setattr(quality, "run_trial", trainer)
    row = quality.finetune_row("concat", base_trial(quality), DATA, None, None, args_for())
    assert row["encoder_lr"] == 5e-5
    assert [t.encoder_lr for t in trainer.trials] == [2e-5, 2e-5, 5e-5, 5e-5, 1e-4, 1e-4]  # every lr, every seed
    chosen = [t for t in trainer.trials if t.encoder_lr == 5e-5]
    assert row["keys"] == [t.key for t in chosen]
    assert all(t.finetune and t.stage == "finetune" and "ft_epochs=3,encoder_lr=5e-05" in t.schedule for t in chosen)
    assert [g["encoder_lr"] for g in row["grid"]] == [2e-5, 5e-5, 1e-4]
    assert row["grid"][1]["val_rank"][0] == pytest.approx(0.7305)  # mean over the two seeds


def test_finetune_row_ties_go_to_the_first_lr(quality, monkeypatch):
    monkeypatch.setattr(quality, "run_trial", FakeTrainer({2e-5: 0.70, 5e-5: 0.70, 1e-4: 0.70}))
    row = quality.finetune_row("concat", base_trial(quality), DATA, None, None, args_for())
    assert row["encoder_lr"] == 2e-5


@pytest.mark.parametrize("small", ["concat", "mvsa_single:concat"])
def test_small_grid_heads_try_the_first_lr_only(quality, monkeypatch, small):
    trainer = FakeTrainer({2e-5: 0.60, 5e-5: 0.90, 1e-4: 0.95})
    monkeypatch.setattr(quality, "run_trial", trainer)
    args = args_for(finetune_small_grid_heads=[small])
    row = quality.finetune_row("concat", base_trial(quality), DATA, None, None, args)
    assert row["encoder_lr"] == 2e-5 and len(row["grid"]) == 1
    assert {t.encoder_lr for t in trainer.trials} == {2e-5}


def test_small_grid_heads_of_another_dataset_do_not_apply(quality, monkeypatch):
    monkeypatch.setattr(quality, "run_trial", FakeTrainer({2e-5: 0.60, 5e-5: 0.90, 1e-4: 0.95}))
    args = args_for(finetune_small_grid_heads=["multioff:concat"])
    row = quality.finetune_row("concat", base_trial(quality), DATA, None, None, args)
    assert row["encoder_lr"] == 1e-4 and len(row["grid"]) == 3


def test_the_command_line_reads_the_finetune_options_and_checks_head_names(quality):
    args = quality.parse_args(
        ["--finetune-small-grid-heads", "multioff:early_fusion", "--finetune-encoder-lr", "2e-5,5e-5"]
    )
    assert args.finetune_small_grid_heads == ["multioff:early_fusion"]
    assert args.finetune_encoder_lr == [2e-5, 5e-5]
    with pytest.raises(ValueError, match="unknown fusion head 'nope'"):
        quality.parse_args(["--finetune-small-grid-heads", "nope"])


def test_fusion_beats_unimodal_shows_the_smallest_margin(quality):
    def row(acc, f1, val=0.5):
        return {"test_mean": {"accuracy": acc, "macro_f1": f1}, "val_mean": {"macro_f1": val, "accuracy": val}}

    rows = {"text_only": row(0.78, 0.75), "image_only": row(0.60, 0.58)}
    fusion = {"concat": row(0.80, 0.7501), "align": row(0.81, 0.77), "cross": row(0.79, 0.76)}
    fusion |= {"cross_attention": row(0.79, 0.76), "early_fusion": row(0.785, 0.76)}
    targets = quality.check_targets(quality.DATASETS["mvsa_single"], {**rows, **fusion}, {}, None)
    beats = {t["target"]: t for t in targets if t.get("scope") == "frozen encoders"}
    f1 = beats["every fusion head beats the best unimodal head (macro_f1)"]
    assert f1["met"] and f1["closest"] == (pytest.approx(0.0001), "concat")
    assert "smallest margin: `concat`, +0.01 points" in quality.target_line("mvsa_single", f1)
    rows["text_only"] = row(0.795, 0.75)  # now concat (0.80) beats it but early_fusion (0.785) does not
    acc = next(t for t in quality.check_targets(quality.DATASETS["mvsa_single"], {**rows, **fusion}, {}, None)
               if t["target"].endswith("(accuracy)") and t["scope"] == "frozen encoders")  # fmt: skip
    assert not acc["met"] and acc["not_beating"] == ["cross", "cross_attention", "early_fusion"]
    assert "smallest margin" not in quality.target_line("mvsa_single", acc)
