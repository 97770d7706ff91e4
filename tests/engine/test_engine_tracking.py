"""Experiment tracking (``train.report_to``): what a fit writes to TensorBoard and MLflow, read back through the
libraries' own readers; the config's and the missing extra's errors."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from _engine_support import make_config

from mmfuse.config import ConfigError, validate_config
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.engine.tracking import TrackerNotInstalledError

# TensorBoard stores scalars as float32: values read back agree with the run's float64 numbers to float32 precision
F32 = {"rel": 1e-6, "abs": 1e-7}

# 70 training examples in batches of 16: 5 optimizer steps per epoch
STEPS_PER_EPOCH = 5


@pytest.fixture
def tensorboard_installed() -> None:
    pytest.importorskip("tensorboard", reason='the track extra is not installed (pip install "mmfuse[track]")')


def _event_accumulator(folder: Path):
    from tensorboard.backend.event_processing import event_accumulator

    ea = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    ea.Reload()
    return ea


def _hparams(folder: Path) -> dict[str, object]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    ea = _event_accumulator(folder)
    content = ea.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


@pytest.mark.parametrize("report_to", [["wandb"], "comet", ["tensorboard", 3]])
def test_report_to_names_the_unknown_tracker_and_the_allowed_ones(report_to) -> None:
    with pytest.raises(ConfigError, match=r"train\.report_to.*tensorboard.*mlflow") as info:
        validate_config({"train": {"report_to": report_to}})
    assert "none" in str(info.value) and "all" in str(info.value)


def test_report_to_accepts_the_hugging_face_spellings() -> None:
    assert validate_config({}).train.report_to == []
    assert validate_config({"train": {"report_to": "none"}}).train.report_to == []
    assert validate_config({"train": {"report_to": "all"}}).train.report_to == ["tensorboard", "mlflow"]
    assert validate_config({"train": {"report_to": "mlflow"}}).train.report_to == ["mlflow"]
    with pytest.raises(ConfigError, match="log_every_steps"):
        validate_config({"train": {"log_every_steps": 0}})


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_missing_tracker_package_names_the_extra_before_the_run_starts(
    tracker, fake_encoders, synthetic_root: Path, synthetic_splits, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, tracker, None)  # import and find_spec of it fail, as when it is not installed
    cfg = make_config(synthetic_root, tmp_path, train={"report_to": [tracker]})
    with pytest.raises(TrackerNotInstalledError, match=r'pip install "mmfuse\[track\]"') as info:
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    assert tracker in str(info.value) and "report_to=none" in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing was written


def test_the_cli_says_which_extra_to_install_and_exits_2(
    fake_encoders, synthetic_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from mmfuse.cli import app

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as when it is not installed
    config = tmp_path / "config.yaml"
    config.write_text(make_config(synthetic_root, tmp_path).to_yaml(), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(config), "train.report_to=[mlflow]"])
    assert result.exit_code == 2, result.output
    assert "error: train.report_to=['mlflow'] needs mlflow" in result.stderr
    assert 'pip install "mmfuse[track]"' in result.stderr and "Traceback" not in result.output


def test_tensorboard_reads_back_loss_lr_validation_test_metrics_and_config(
    tensorboard_installed, fake_encoders, synthetic_root: Path, tmp_path: Path
) -> None:
    cfg = make_config(
        synthetic_root, tmp_path, train={"report_to": ["tensorboard"], "log_every_steps": STEPS_PER_EPOCH}
    )
    clf = MultimodalClassifier(cfg).fit()  # the data config's train/val, then its labeled test split
    ea = _event_accumulator(tmp_path / "run" / "tensorboard")
    history = clf.history
    epoch_ends = [r["step"] for r in history]
    assert epoch_ends == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    # logged once per epoch here, the loss since the last log is the epoch's mean training loss
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == epoch_ends
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in history], **F32)
    assert [e.value for e in ea.Scalars("train/lr")] == pytest.approx([r["lr"]["head"] for r in history], **F32)
    for metric in ("accuracy", "macro_f1", "loss"):
        val = ea.Scalars(f"val/{metric}")
        assert [e.step for e in val] == epoch_ends
        assert [e.value for e in val] == pytest.approx([r["val"][metric] for r in history], **F32)
    test = ea.Scalars("test/accuracy")
    assert [e.step for e in test] == [epoch_ends[-1]]
    assert test[0].value == pytest.approx(clf.summary["test"]["accuracy"], **F32)
    hparams = _hparams(tmp_path / "run" / "tensorboard")
    assert hparams["model.head.name"] == "concat"
    assert hparams["optim.lr"] == pytest.approx(3e-3)
    assert hparams["train.report_to"] == "['tensorboard']"


def test_tensorboard_logs_every_n_steps(
    tensorboard_installed, fake_encoders, synthetic_root: Path, synthetic_splits, tmp_path: Path
) -> None:
    cfg = make_config(synthetic_root, tmp_path, train={"report_to": "tensorboard", "log_every_steps": 3})
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    ea = _event_accumulator(tmp_path / "run" / "tensorboard")
    last = clf.history[-1]["step"]
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(3, last + 1, 3))
    assert [e.step for e in ea.Scalars("train/lr")] == list(range(3, last + 1, 3))
    assert "test/accuracy" not in ea.Tags()["scalars"]  # no test split given: none logged


# ------------------------------------------------------------------------------------------------------ MLflow


def _mlflow_runs(uri: str, experiment: str, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.search_runs(experiment_names=[experiment]), mlflow.MlflowClient(uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _check_mlflow_run(runs, client, clf: MultimodalClassifier, tmp_path: Path) -> None:
    """One finished run named after the run folder: config as parameters, per-step loss and lr, per-epoch val
    metrics, test metrics at the last step, summary.json (with the test metrics) and config.yaml as artifacts.
    MLflow stores metrics as float64: they read back exactly."""
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == "run"
    assert run["params.model.head.name"] == "concat" and float(run["params.optim.lr"]) == 3e-3
    assert run["params.train.report_to"] == "['mlflow']"
    run_id, history = run["run_id"], clf.history
    epoch_ends = [r["step"] for r in history]
    expected = {
        "train/loss": [r["train_loss"] for r in history],
        "train/lr": [r["lr"]["head"] for r in history],
        "val/macro_f1": [r["val"]["macro_f1"] for r in history],
    }
    for key, values in expected.items():
        assert _history(client, run_id, key) == list(zip(epoch_ends, values, strict=True)), key
    assert _history(client, run_id, "test/accuracy") == [(epoch_ends[-1], clf.summary["test"]["accuracy"])]
    assert {a.path for a in client.list_artifacts(run_id)} == {"summary.json", "config.yaml"}
    summary = json.loads(Path(client.download_artifacts(run_id, "summary.json", str(tmp_path))).read_text())
    assert summary["test"]["accuracy"] == clf.summary["test"]["accuracy"]


@pytest.mark.slow  # MLflow's import and its SQLite store take ~20 s on a 2-core machine
def test_mlflow_default_store_in_out_dir_reads_back(
    fake_encoders, synthetic_root: Path, tmp_path: Path, mlflow_db: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "runs"
    out.mkdir()
    shutil.copy(mlflow_db, out / "mlflow.db")  # the default store, its tables made already (faster)
    cfg = make_config(
        synthetic_root, out, train={"report_to": ["mlflow"], "log_every_steps": STEPS_PER_EPOCH},
        run={"experiment": "tiny"},
    )  # fmt: skip
    clf = MultimodalClassifier(cfg).fit()
    runs, client = _mlflow_runs(f"sqlite:///{out / 'mlflow.db'}", "tiny", monkeypatch)
    _check_mlflow_run(runs, client, clf, tmp_path / "download")
    assert (out / "mlartifacts").is_dir()  # artifacts beside the store, not in the working directory


@pytest.mark.slow  # starts a real mlflow server (~60 s on a loaded 2-core machine)
def test_mlflow_server_reads_back(
    fake_encoders, synthetic_root: Path, tmp_path: Path, mlflow_server: str, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tiny-on-server")
    cfg = make_config(synthetic_root, tmp_path, train={"report_to": ["mlflow"], "log_every_steps": STEPS_PER_EPOCH})
    clf = MultimodalClassifier(cfg).fit()
    runs, client = _mlflow_runs(mlflow_server, "tiny-on-server", monkeypatch)
    _check_mlflow_run(runs, client, clf, tmp_path / "download")
    assert not (tmp_path / "mlflow.db").exists()  # $MLFLOW_TRACKING_URI: nothing in the out_dir


@pytest.mark.slow  # two launched processes
def test_two_processes_log_once_the_loss_of_every_process(
    tensorboard_installed, fake_encoders, synthetic_root: Path, tmp_path: Path
) -> None:
    """Only the main process writes, and the logged loss is the mean over both processes' halves of the batches (the
    epoch's training loss when logged once per epoch), not the main process's half alone."""
    import os
    import subprocess

    sections = {
        "train": {"report_to": ["tensorboard"], "log_every_steps": STEPS_PER_EPOCH, "class_weights": "balanced"}
    }
    cfg = make_config(synthetic_root, tmp_path, **sections)
    config = tmp_path / "two.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    launcher = Path(__file__).with_name("_launch_train.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(launcher)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*command, str(config)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = tmp_path / "run" / "tensorboard"
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "x2" in (tmp_path / "run" / "train.log").read_text()
    loss = _event_accumulator(folder).Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in history]
    assert [e.value for e in loss] == pytest.approx([r["train_loss"] for r in history], **F32)
    # one writer: the training events file and the hyperparameters' one, both from the main process
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow  # MLflow's import and its SQLite store
def test_mlflow_status_of_a_pruned_and_of_a_failed_run(
    fake_encoders, synthetic_root: Path, synthetic_splits, tmp_path: Path, mlflow_db: Path, monkeypatch
) -> None:
    import optuna

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shutil.copy(mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # an experiment made through $MLFLOW_TRACKING_URI keeps artifacts in ./mlruns
    stops = {"pruned": optuna.TrialPruned("pruned at epoch 1"), "failed": RuntimeError("broken callback")}
    for name, error in stops.items():

        def stop(record, error=error):
            raise error

        cfg = make_config(synthetic_root, tmp_path, train={"report_to": ["mlflow"]}, run={"name": name})
        with pytest.raises(type(error)):
            MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"], callbacks=[stop])
    runs, client = _mlflow_runs(uri, "mmfuse", monkeypatch)
    status = dict(zip(runs["tags.mlflow.runName"], runs["status"], strict=True))
    assert status == {"pruned": "KILLED", "failed": "FAILED"}
    for run_id in runs["run_id"]:  # the epoch that ran was logged before the callback stopped the run
        assert [step for step, _ in _history(client, run_id, "val/accuracy")] == [STEPS_PER_EPOCH]


@pytest.mark.slow  # MLflow's import and its SQLite store
def test_a_resumed_run_continues_its_tensorboard_and_mlflow_runs(
    tensorboard_installed, fake_encoders, synthetic_root: Path, synthetic_splits, tmp_path: Path, mlflow_db: Path,
    monkeypatch, caplog,
) -> None:  # fmt: skip
    """Interrupted in epoch 2 after logging steps 6 and 7, then resumed from the epoch-1 checkpoint to train longer:
    TensorBoard shows each step once (the interrupted attempt's steps 6-7 are purged), MLflow has one run that
    ends finished, and the parameter that changed on resume is named."""
    from mmfuse.engine.trainer import Trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    shutil.copy(mlflow_db, tmp_path / "mlflow.db")
    cfg = make_config(synthetic_root, tmp_path, train={"report_to": "all", "log_every_steps": 1})
    real_loss, calls = Trainer._loss, []

    def interrupted_at_step_8(self, batch):
        calls.append(1)
        if len(calls) == 2 * STEPS_PER_EPOCH - 2:
            raise KeyboardInterrupt
        return real_loss(self, batch)

    monkeypatch.setattr(Trainer, "_loss", interrupted_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    monkeypatch.setattr(Trainer, "_loss", real_loss)
    with caplog.at_level(logging.WARNING, logger="mmfuse"):
        clf = MultimodalClassifier.resume(tmp_path / "run", overrides=["train.epochs=3"])
    last = clf.history[-1]["step"]
    assert last == 3 * STEPS_PER_EPOCH
    ea = _event_accumulator(tmp_path / "run" / "tensorboard")
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, last + 1))
    runs, client = _mlflow_runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "mmfuse", monkeypatch)
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    run_id = runs["run_id"].iloc[0]
    assert [s for s, _ in _history(client, run_id, "val/accuracy")] == [r["step"] for r in clf.history]
    assert {s for s, _ in _history(client, run_id, "train/loss")} == set(range(1, last + 1))
    assert runs["params.train.epochs"].iloc[0] == "2"  # MLflow parameters cannot change ...
    assert any("changed on resume: train.epochs (2 -> 3)" in r.getMessage() for r in caplog.records)  # ... so said
