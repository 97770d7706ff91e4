"""A run's HTML report, made after training, goes to the MLflow run the run logged to (``train.report_to``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from mmfuse.config import validate_config
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.report import write_report

pytestmark = pytest.mark.slow  # MLflow's import and its SQLite store take ~20 s on a 2-core machine


def test_the_report_of_an_mlflow_run_is_one_of_its_artifacts(
    binary_root: Path, tmp_path: Path, mlflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "runs"
    out.mkdir()
    shutil.copy(mlflow_db, out / "mlflow.db")  # the default store in run.out_dir, its tables already made
    cfg = validate_config({
        "data": {"root": str(binary_root), "preset": "hateful_memes"},
        "model": {"text_encoder": str(tiny_bert_dir()), "image_encoder": str(tiny_clip_vision_dir()), "head": "concat"},
        "train": {"epochs": 1, "batch_size": 16, "report_to": ["mlflow"]},
        "run": {"quiet": True, "out_dir": str(out), "name": "tracked"},
    })  # fmt: skip
    run = MultimodalClassifier(cfg).fit().run_dir.path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the report finds the store the run recorded, not one relative to here
    lines: list[str] = []
    page = write_report(run, log=lines.append)

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("mmfuse").experiment_id])
    run_id = mlflow_run.info.run_id
    assert {a.path for a in client.list_artifacts(run_id, "report")} == {"report/report.html"}
    logged = Path(client.download_artifacts(run_id, "report/report.html", str(tmp_path)))
    assert logged.read_bytes() == page.read_bytes()
    assert mlflow_run.info.status == "FINISHED"
    assert any(f"added report.html to MLflow run {run_id}" in line for line in lines)


def test_a_run_without_mlflow_says_nothing_about_it(binary_run: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    write_report(binary_run, tmp_path / "report", log=lines.append)
    assert not any("MLflow" in line for line in lines)
