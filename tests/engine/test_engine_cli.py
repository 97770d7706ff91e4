"""End to end through the real CLI on the small synthetic set: train -> evaluate -> predict -> resume, and the
exit codes and messages of user errors (2, no traceback) and of a diverged run (1)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _engine_support import make_config
from typer.testing import CliRunner

from mmfuse.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_config(path: Path, root: Path, out: Path, **sections) -> Path:
    path.write_text(make_config(root, out, **sections).to_yaml(), encoding="utf-8")
    return path


@pytest.fixture
def cfg_file(tmp_path: Path, synthetic_root: Path) -> Path:
    return write_config(tmp_path / "cfg.yaml", synthetic_root, tmp_path / "runs")


def check_ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


def test_train_evaluate_predict_resume(fake_encoders, cfg_file: Path, tmp_path: Path, synthetic_root: Path) -> None:
    result = invoke("train", cfg_file, "--set", "train.epochs=2")
    check_ok(result)
    run = tmp_path / "runs" / "run"
    assert "completed" in result.stdout and "best epoch" in result.stdout

    # the run folder
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert json.loads((run / "label_map.json").read_text()) in (["0", "1"], {"classes": ["0", "1"]})
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert 0.0 <= r["val"]["accuracy"] <= 1.0 and r["train_loss"] > 0
    for which in ("best", "last"):
        assert (run / "checkpoints" / which / "model.safetensors").is_file()
        meta = json.loads((run / "checkpoints" / which / "meta.json").read_text())
        assert meta["classes"] == ["0", "1"] and meta["model"]["head"]["name"] == "concat"
    assert (run / "checkpoints" / "last" / "training_state.pt").is_file()
    assert json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 2
    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    best = next(r for r in records if r["epoch"] == summary["best_epoch"])
    assert summary["val"] == pytest.approx(best["val"])
    assert summary["test"]["n"] == 12

    # evaluate: metrics beside the baselines, and the same numbers in --json
    out_json = tmp_path / "eval.json"
    result = invoke("evaluate", run, "--split", "test", "--json", out_json)
    check_ok(result)
    for word in ("accuracy", "macro_f1", "auroc", "majority", "random", "confusion matrix", "per class"):
        assert word in result.stdout, word
    evaluation = json.loads(out_json.read_text())
    assert evaluation["n"] == 12 and set(evaluation["baselines"]) == {"majority", "random"}
    assert evaluation["metrics"]["accuracy"] == pytest.approx(summary["test"]["accuracy"])
    assert sum(map(sum, evaluation["metrics"]["confusion_matrix"])) == 12
    assert f"{evaluation['metrics']['accuracy']:.4f}" in result.stdout

    # predict, on a labeled file and on the same file without labels
    labeled = synthetic_root / "test.jsonl"
    rows = [json.loads(line) for line in labeled.read_text().splitlines()]
    unlabeled = synthetic_root / "test_unlabeled.jsonl"
    unlabeled.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in rows))
    frames = []
    for source in (labeled, unlabeled):
        preds = tmp_path / f"preds_{source.stem}.csv"
        check_ok(invoke("predict", run, source, "--out", preds))
        frame = pd.read_csv(preds)
        assert list(frame.columns) == ["id", "proba", "label", "image_present"]
        assert frame["id"].tolist() == [r["id"] for r in rows]
        assert frame["proba"].between(0, 1).all()
        assert ((frame["proba"] >= 0.5).astype(int) == frame["label"]).all()
        frames.append(frame)
    pd.testing.assert_frame_equal(frames[0], frames[1])
    tuned = tmp_path / "[out]" / "[/]tuned.csv"  # brackets rich would read as markup: printed as written
    result = invoke("predict", run, unlabeled, "--out", tuned, "--threshold", "tuned")
    check_ok(result)
    assert f"wrote 12 predictions to {tuned}" in " ".join(result.stderr.split())
    frame = pd.read_csv(tuned)
    assert ((frame["proba"] >= summary["threshold"]).astype(int) == frame["label"]).all()

    # resume: train on to epoch 3 from the last checkpoint
    result = invoke("train", "--resume", run, "train.epochs=3")
    check_ok(result)
    records_after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records_after] == [1, 2, 3]
    assert records_after[:2] == records  # the first two epochs are not redone
    assert records_after[2]["step"] > records[1]["step"]
    assert json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3


def test_existing_run_folder_is_refused(fake_encoders, cfg_file: Path) -> None:
    check_ok(invoke("train", cfg_file, "train.epochs=1"))
    result = invoke("train", cfg_file, "train.epochs=1")
    assert result.exit_code == 2
    assert "exists already" in result.stderr and "--resume" in result.stderr
    check_ok(invoke("train", cfg_file, "train.epochs=1", "run.overwrite=true"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["optim.name=adamx"], ["optim.name", "'adam', 'adamw' or 'sgd'"]),
        (["optim.lr=-1"], ["optim.lr", "greater than 0"]),
        (["train.bogus=1"], ["train", "'bogus'", "allowed keys"]),
        (["nonsense=1"], ["unknown override key 'nonsense'"]),
        (["seed=1"], ["ambiguous", "train.seed", "data.split.seed"]),
        (["--set", "optim.lr"], ["must be key=value"]),
        (["head.name=nope"], ["unknown fusion head 'nope'", "concat"]),
        (["head.name=[red]x"], ["'[red]x'"]),  # quoted as given, not read as console markup
        (["head.params.bogus=1"], ["'bogus'", "params of head 'concat'", "hidden="]),
        (["head.params.hidden=wide"], ["params.hidden", "number"]),
        (["train.class_weights=[1, 2, 3]"], ["3 weights", "2 classes"]),
        (["train.report_to=[wandb]"], ["train.report_to", "'wandb'", "'tensorboard', 'mlflow'"]),
    ],
)
def test_config_errors_exit_2_with_message(fake_encoders, cfg_file: Path, args: list[str], expected: list[str]) -> None:
    result = invoke("train", cfg_file, *args)
    assert result.exit_code == 2, result.output
    assert "error:" in result.stderr
    for part in expected:
        assert part in result.stderr, f"{part!r} not in {result.stderr!r}"
    assert "Traceback" not in result.output


def test_file_errors_exit_2(tmp_path: Path) -> None:
    for args, expected in [
        (["train", tmp_path / "missing.yaml"], "not found"),
        (["train"], "pass a CONFIG file"),
        (["train", "--resume", tmp_path], "not a run folder"),
        (["evaluate", tmp_path / "nothing"], "not found"),
        (["predict", tmp_path, tmp_path / "x.jsonl", "--out", tmp_path / "p.csv"], "no checkpoint"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_bad_yaml_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    result = invoke("train", bad)
    assert result.exit_code == 2 and "not valid YAML" in result.stderr


def test_diverged_run_exits_1(fake_encoders, cfg_file: Path, tmp_path: Path) -> None:
    result = invoke("train", cfg_file, "optim.lr=1e30", "optim.grad_clip=null", "optim.name=sgd", "train.epochs=3")
    assert result.exit_code == 1, result.output
    assert "the training loss became" in result.stderr and "optim.lr" in result.stderr
    assert "Traceback" not in result.output
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "loss became" in summary["error"]
