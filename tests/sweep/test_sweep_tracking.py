"""A sweep with ``train.report_to: [mlflow]``: one MLflow run per trial, nested under the sweep's run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mmfuse.sweep import run_sweep, sweep_from_dict


@pytest.mark.slow  # four tiny trials and MLflow's SQLite store (~40 s on a 2-core machine)
def test_each_trial_is_an_mlflow_run_nested_under_the_sweep_run(
    base_config: dict[str, Any], tmp_path: Path, mlflow_db: Path, monkeypatch
) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweeps")
    base = copy.deepcopy(base_config)
    base["train"] = {**base["train"], "report_to": ["mlflow"], "log_every_steps": 2}
    folder = tmp_path / "grid"
    folder.mkdir()
    shutil.copy(mlflow_db, folder / "mlflow.db")  # the sweep's default store, its tables made already (faster)
    spec = {"name": "grid", "base": base, "grid": {"lr": [3e-3, 1e-3]}}
    result = run_sweep(sweep_from_dict(spec), out=folder, log=lambda line: None)
    assert result.finished
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["sweeps"])
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert list(parents["tags.mlflow.runName"]) == ["grid"] and list(parents["status"]) == ["FINISHED"]
    children = runs[runs["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]]
    # one child per trial (two grid points and the two unimodal baselines), named after its trial folder
    trials = sorted(p.name for p in (folder / "trials").iterdir())
    assert sorted(children["tags.mlflow.runName"]) == trials and len(trials) == 4
    assert set(children["status"]) == {"FINISHED"}
    by_name = children.set_index("tags.mlflow.runName")
    for number, row in result.table.set_index("trial").iterrows():
        trial = f"trial-{int(number):04d}"
        last_epoch = json.loads((folder / "trials" / trial / "metrics.jsonl").read_text().splitlines()[-1])
        assert by_name.loc[trial, "metrics.val/auroc"] == last_epoch["val"]["auroc"]  # float64 both: exact
        lr = float(by_name.loc[trial, "params.optim.lr"])
        assert lr == (row["lr"] if row["baseline"] == "" else base_config.get("optim", {}).get("lr", 1e-3))
