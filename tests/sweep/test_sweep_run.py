"""Running sweeps end to end on tiny encoders: the ranked table, the test metric of the selected trial only, resume
after an interruption, searches with a budget and pruning callbacks, and ensembles of the best trials."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.sweep import (
    Ensemble,
    PruneOnEpoch,
    build_ensemble,
    greedy_selection,
    load_predictor,
    load_study,
    run_sweep,
    sweep_from_dict,
)
from mmfuse.sweep import runner as runner_module


@pytest.fixture(scope="module")
def grid_sweep(base_config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    """A finished 3-point grid (lr) and the two unimodal baselines, ranked by val AUROC."""
    spec = {"name": "grid", "base": copy.deepcopy(base_config), "grid": {"lr": [3e-3, 1e-3, 3e-4]}}
    lines: list[str] = []
    result = run_sweep(sweep_from_dict(spec), out=tmp_path_factory.mktemp("sweeps") / "grid", log=lines.append)
    return result, lines


def test_grid_runs_every_point_once_and_ranks_on_validation(grid_sweep):
    result, lines = grid_sweep
    table = result.table
    assert result.finished and result.metric == "auroc" and sorted(result.ran) == [0, 1, 2, 3, 4]
    assert list(table["state"]) == ["complete"] * 5
    assert list(table["rank"]) == [1, 2, 3, 4, 5]
    values = list(table["val_auroc"])
    assert values == sorted(values, reverse=True)
    assert (table["epochs_run"] == 2).all() and (table["train_s"] > 0).all()
    # the unimodal baselines run first, ranked among the trials, with the base config's lr
    baselines = table[table["baseline"] != ""]
    assert dict(zip(baselines["baseline"], baselines["trial"], strict=True)) == {"text_only": 0, "image_only": 1}
    assert set(baselines["lr"]) == {"(base)"}
    trials = table[table["baseline"] == ""]
    assert sorted(trials["lr"]) == [3e-4, 1e-3, 3e-3]
    # the selected trial is the best sweep trial on validation, never a baseline; only it is tested
    selected = json.loads((result.folder / "selected.json").read_text())
    best = trials.iloc[0]
    assert selected["trial"] == best["trial"] and selected["val"] == pytest.approx(best["val_auroc"])
    assert table.loc[table["test_auroc"].notna(), "trial"].tolist() == [best["trial"]]
    assert selected["test"]["n"] == 12 and "majority_accuracy" in selected["test"]
    assert "trial 0 started: unimodal baseline text_only" in lines
    assert any(line.startswith("trial 2 started: lr=0.003") for line in lines)


def test_tables_and_run_folders_are_written(grid_sweep):
    result, _ = grid_sweep
    folder = result.folder
    csv = pd.read_csv(folder / "trials.csv")
    assert list(csv["trial"]) == list(result.table["trial"])
    md = (folder / "trials.md").read_text()
    assert "| rank | trial | state | baseline | lr | val_auroc |" in md
    assert "Selected on validation: trial" in md and "measured on the selected trial only" in md
    line = next(x for x in md.splitlines() if x.startswith("Unimodal baselines"))
    assert "only the head swapped; never selected): val auroc " in line
    assert "text_only 0." in line and "image_only 0." in line
    assert "| text_only | (base) |" in md
    info = json.loads((folder / "sweep.json").read_text())
    assert info["metric"] == "auroc" and info["mode"] == "grid" and info["storage"] == "study.db"
    for rel, baseline in zip(result.table["run_dir"], result.table["baseline"], strict=True):
        run = folder / rel
        assert (run / "checkpoints" / "best").is_dir()
        head = yaml.safe_load((run / "config.yaml").read_text())["model"]["head"]
        assert head == {"name": baseline or "concat", "params": {"hidden": 32}}
        with np.load(run / "val_predictions.npz") as data:
            assert data["proba"].shape == (12, 2) and len(data["ids"]) == 12


def test_grid_points_are_optuna_parameters(grid_sweep):
    result, _ = grid_sweep
    study = load_study(result.folder)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    trials = [t for t in complete if "mmfuse.baseline" not in t.user_attrs]
    assert sorted(t.params["lr"] for t in trials) == [3e-4, 1e-3, 3e-3]
    assert all(len(t.intermediate_values) == 2 for t in trials)  # one report per epoch
    baselines = [t for t in complete if "mmfuse.baseline" in t.user_attrs]
    assert len(baselines) == 2 and all(t.params == {} and not t.intermediate_values for t in baselines)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_running_a_finished_sweep_again_runs_nothing(grid_sweep, base_config):
    result, _ = grid_sweep
    spec = {"name": "grid", "base": copy.deepcopy(base_config), "grid": {"lr": [3e-3, 1e-3, 3e-4]}}
    again = run_sweep(sweep_from_dict(spec), out=result.folder, log=lambda _: None)
    assert again.ran == [] and again.finished
    pd.testing.assert_frame_equal(again.table, result.table)


def test_a_changed_sweep_is_refused_in_the_same_folder(grid_sweep, base_config):
    result, _ = grid_sweep
    spec = {"name": "grid", "base": copy.deepcopy(base_config), "grid": {"lr": [0.1]}}
    with pytest.raises(ValueError, match="was made by a different sweep"):
        run_sweep(sweep_from_dict(spec), out=result.folder, log=lambda _: None)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(base_config, tmp_path, monkeypatch):
    spec = {"name": "resume", "base": copy.deepcopy(base_config), "trials": [{"lr": 1e-3}, {"lr": 2e-3}, {"lr": 4e-3}],
            "baselines": False}  # fmt: skip
    sweep = sweep_from_dict(spec)
    original = PruneOnEpoch.__call__

    def interrupt_trial_1(self, record):
        original(self, record)
        if self.trial.number == 1 and record["epoch"] == 1:
            raise KeyboardInterrupt  # Ctrl-C after the first epoch's checkpoint of the second trial

    monkeypatch.setattr(runner_module.PruneOnEpoch, "__call__", interrupt_trial_1)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out=tmp_path / "s", log=lambda _: None)
    monkeypatch.undo()
    state = torch.load(tmp_path / "s" / "trials" / "trial-0001" / "checkpoints" / "last" / "training_state.pt")
    before = state["loop"]["seconds"]  # the interrupted trial's training time up to its epoch-1 checkpoint
    assert before > 0
    table = pd.read_csv(tmp_path / "s" / "trials.csv")  # written on the way out
    assert dict(zip(table["trial"], table["state"], strict=True)) == {
        0: "complete",
        1: "interrupted",
        2: "waiting",
        3: "waiting",
    }

    lines: list[str] = []
    result = run_sweep(sweep, out=tmp_path / "s", log=lines.append)
    assert sorted(result.ran) == [2, 3]  # trial 0 is not run again; 3 is trial 1 queued again
    study = load_study(tmp_path / "s")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert Counter(t.user_attrs["mmfuse.point"] for t in complete) == {0: 1, 1: 1, 2: 1}
    retry = next(t for t in complete if t.user_attrs.get("mmfuse.retry_of") == 1)
    assert retry.number == 3 and retry.params == {"lr": 2e-3}
    assert "trial 3 started: lr=0.002 (again, was trial 1)" in lines
    # it continued the interrupted trial's run folder from its epoch-1 checkpoint, so epoch 1 ran once
    assert retry.user_attrs["mmfuse.run_dir"] == "trials/trial-0001"
    history = [json.loads(line) for line in (tmp_path / "s" / "trials" / "trial-0001" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert "resumed" in (tmp_path / "s" / "trials" / "trial-0001" / "train.log").read_text()
    assert sorted(retry.intermediate_values) == [1, 2]
    assert result.finished
    assert set(result.table["state"]) == {"complete", "interrupted"}
    # the table after a resume reads like an uninterrupted sweep's: whole epoch counts (not 2.0 beside the
    # interrupted row's empty cells), the resumed trial's from its run (as an uninterrupted trial's), and its
    # training time includes the epochs before the interruption
    summary = json.loads((tmp_path / "s" / "trials" / "trial-0001" / "summary.json").read_text())
    row = result.table.set_index("trial").loc[3]
    assert (row["best_epoch"], row["epochs_run"]) == (summary["best_epoch"], summary["epochs_run"])
    assert summary["epochs_run"] == 2
    complete = result.table[result.table["state"] == "complete"]
    csv_text = pd.read_csv(tmp_path / "s" / "trials.csv", dtype=str)
    csv_complete = csv_text[csv_text["state"] == "complete"]
    assert list(csv_complete["epochs_run"]) == [str(n) for n in complete["epochs_run"]] == ["2", "2", "2"]
    assert list(csv_complete["best_epoch"]) == [str(n) for n in complete["best_epoch"]]
    assert set(complete["best_epoch"]) <= {1, 2}
    after = history[1]["seconds"]  # epoch 2, trained after the resume
    assert row["train_s"] >= before + after


class _FakeTrial:
    def __init__(self, prune_at: int | None) -> None:
        self.prune_at = prune_at
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return self.prune_at is not None and self.reports[-1][1] >= self.prune_at


def test_prune_on_epoch_reports_each_epoch_and_stops_when_told():
    trial = _FakeTrial(prune_at=2)
    callback = PruneOnEpoch(trial, "macro_f1")  # type: ignore[arg-type]
    callback({"epoch": 1, "val": {"macro_f1": 0.4}})
    callback({"epoch": 2, "val": {"macro_f1": None}})  # undefined: not reported
    with pytest.raises(optuna.TrialPruned, match=r"pruned after epoch 3: val macro_f1 0\.5000"):
        callback({"epoch": 3, "val": {"macro_f1": 0.5}})
    assert trial.reports == [(0.4, 1), (0.5, 3)]


def test_search_respects_the_trial_budget_and_reports_epochs(base_config, tmp_path):
    spec = {
        "name": "search",
        "base": copy.deepcopy(base_config),
        "metric": "loss",
        "search": {"params": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "head.params.dropout": [0.0, 0.3]},
                   "n_startup_trials": 2},
        "n_trials": 3,
        "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    }  # fmt: skip
    sweep = sweep_from_dict(spec)
    result = run_sweep(sweep, out=tmp_path / "s", log=lambda _: None)
    assert sorted(result.ran) == [0, 1, 2, 3, 4] and result.finished  # the two baselines, then the budget of 3
    assert set(result.table["state"]) <= {"complete", "pruned"}
    study = load_study(tmp_path / "s")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    searched = [t for t in study.trials if "mmfuse.baseline" not in t.user_attrs]
    assert [t.number for t in searched] == [2, 3, 4]
    for trial in searched:
        assert 1e-4 <= trial.params["lr"] <= 1e-2 and trial.params["head.params.dropout"] in (0.0, 0.3)
        assert trial.intermediate_values  # the pruner saw every epoch
    values = result.table["val_loss"].dropna().tolist()
    complete = result.table[result.table["state"] == "complete"]["val_loss"].tolist()
    assert complete == sorted(complete) and len(values) == 5  # lower loss first
    # resuming with the same budget runs nothing; a larger budget runs only the difference
    assert run_sweep(sweep, out=tmp_path / "s", log=lambda _: None).ran == []
    assert run_sweep(sweep, out=tmp_path / "s", n_trials=4, log=lambda _: None).ran == [5]


def test_greedy_selection_combines_complementary_members_with_replacement():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    good_first = np.array(
        [[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4], [0.6, 0.4], [0.6, 0.4]]
    )
    good_last = good_first[::-1][:, ::-1].copy()  # right where the first is wrong
    noise = np.full((8, 2), 0.5)
    counts = greedy_selection([good_first, good_last, noise], y, "accuracy", ["0", "1"], rounds=10)
    assert sum(counts) == 10 and counts[0] > 0 and counts[1] > 0 and counts[2] == 0
    assert greedy_selection([good_first, noise], y, "loss", ["0", "1"], rounds=4) == [4, 0]


def test_ensemble_of_top_trials_predicts_the_weighted_mean(grid_sweep, synth_root):
    result, _ = grid_sweep
    folder = build_ensemble(result.folder, top_k=3, rounds=6)
    info = json.loads((folder / "ensemble.json").read_text())
    assert info["format"] == "mmfuse-ensemble" and info["metric"] == "auroc" and info["top_k"] == 3
    assert sum(m["weight"] for m in info["members"]) == pytest.approx(1.0)
    assert all(m["run"].startswith("../trials/") for m in info["members"])
    assert {m["trial"] for m in info["members"]} <= {2, 3, 4}  # never a baseline
    ensemble = load_predictor(folder)
    assert isinstance(ensemble, Ensemble) and ensemble.classes == ["0", "1"]
    test_file = synth_root / "test.jsonl"
    proba = ensemble.predict_proba(test_file)
    expected = sum(w * m.predict_proba(test_file) for m, w in zip(ensemble.members, ensemble.weights, strict=True))
    np.testing.assert_allclose(proba, expected, rtol=1e-6)
    evaluation = ensemble.evaluate(test_file, name="test")
    assert evaluation["n"] == 12 and "majority" in evaluation["baselines"]
    assert list(ensemble.predictions_table(test_file).columns) == ["id", "proba", "label", "image_present"]
    # a run folder loads as the classifier itself
    assert not isinstance(load_predictor(result.folder / result.table["run_dir"][0]), Ensemble)


def test_cli_sweep_and_ensemble(base_config, tmp_path):
    file = tmp_path / "cli.yaml"
    base = copy.deepcopy(base_config)
    file.write_text(yaml.safe_dump({"base": base, "grid": {"head.params.dropout": [0.0, 0.2]}, "baselines": False}))
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(file), "--out", str(tmp_path / "out"), "--set", "train.epochs=1"])
    assert result.exit_code == 0, result.output
    assert "ranked by val auroc" in result.output and "sweep finished" in result.output
    assert pd.read_csv(tmp_path / "out" / "trials.csv")["epochs_run"].tolist() == [1, 1]
    result = runner.invoke(app, ["ensemble", str(tmp_path / "out"), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "val auroc: ensemble" in result.output and (tmp_path / "out" / "ensemble" / "ensemble.json").is_file()
    # mmfuse evaluate and predict take the ensemble folder like a run folder
    result = runner.invoke(app, ["evaluate", str(tmp_path / "out" / "ensemble"), "--split", "test",
                                 "--json", str(tmp_path / "eval.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["n"] == 12 and evaluation["split"] == "test" and "majority" in evaluation["baselines"]
    test_file = str(base["data"]["root"]) + "/test.jsonl"
    ensemble = str(tmp_path / "out" / "ensemble")
    result = runner.invoke(app, ["predict", ensemble, test_file, "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "p.csv")
    expected = load_predictor(tmp_path / "out" / "ensemble").predict_proba(test_file)[:, 1]
    np.testing.assert_allclose(predictions["proba"], expected, rtol=1e-4)

    file.write_text(yaml.safe_dump({"base": base, "grid": {"lr": [-1.0]}}))
    result = runner.invoke(app, ["sweep", str(file), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "optim.lr: Input should be greater than 0" in result.output
    result = runner.invoke(app, ["ensemble", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "is not a sweep folder" in result.output


def test_examples_validate():
    root = Path(__file__).resolve().parents[2] / "examples" / "sweeps"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 2
    from mmfuse.sweep import load_sweep

    for file in files:
        sweep = load_sweep(file)
        assert sweep.base.data is not None and sweep.base.data.preset == "mvsa_single"
        assert sweep.base.data.resolved_root().name == "mvsa_single"
