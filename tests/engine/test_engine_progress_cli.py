"""Long work is never silent: with stderr not a terminal (as in CI or ``nohup``), every long step of the CLI writes
progress lines with done/total, rate and ETA: feature extraction (filling the persistent cache), training epochs,
validation, evaluation, prediction and the report's predictions. ``MMFUSE_PROGRESS_SECONDS=0`` makes a line due after
every batch, so the tiny runs here show them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from _engine_support import make_config
from typer.testing import CliRunner

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from mmfuse.cli import app
from mmfuse.data import make_synthetic

LINE = re.compile(r"^(?P<desc>[\w /]+): (?P<done>\d+)/(?P<total>\d+) ex \(\d+%\), [\d.]+ (ex/s|s/ex), elapsed [\d:]+, "
                  r"(ETA [\d:?]+|done)", re.MULTILINE)  # fmt: skip


def progress(text: str, desc: str) -> list[tuple[int, int]]:
    """(done, total) of each progress line of step ``desc``."""
    return [(int(m["done"]), int(m["total"])) for m in LINE.finditer(text) if m["desc"] == desc]


def check_progress(text: str, desc: str, total: int) -> None:
    counts = progress(text, desc)
    assert counts, f"no progress line of {desc!r} in:\n{text}"
    assert {t for _, t in counts} == {total}, counts
    assert [d for d, _ in counts] == sorted(d for d, _ in counts) and counts[-1][0] == total, counts


def rows(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


@pytest.fixture
def not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CLI runner (its stdout and stderr are not terminals) with a progress line due after every batch."""
    monkeypatch.setenv("MMFUSE_PROGRESS_SECONDS", "0")
    return CliRunner()


def invoke(runner: CliRunner, *args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def tiny_config(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny run's config (real tiny encoders, the persistent feature cache in ``tmp_path``) and its data."""
    root = make_synthetic(tmp_path / "data", n=40, seed=3)
    config = {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": {
            "text_encoder": str(tiny_bert_dir()),
            "image_encoder": str(tiny_clip_vision_dir()),
            "head": {"name": "concat", "params": {"hidden": 16}},
        },
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8},
        "run": {"out_dir": str(tmp_path / "runs"), "name": "run"},
        "cache": {"dir": str(tmp_path / "cache")},  # the persistent cache: feature extraction fills it
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg, root


def check_every_step(runner: CliRunner, cfg: Path, root: Path, run: Path, tmp_path: Path, report: bool) -> None:
    """train (2 epochs, quiet), evaluate, predict and (``report``) report through the CLI each write progress
    lines."""
    n_train, n_val, n_test = rows(root / "train.jsonl"), rows(root / "dev.jsonl"), rows(root / "test.jsonl")

    # train, quiet: no per-epoch lines, but off a terminal the progress lines stay
    result = invoke(runner, "train", cfg, "-q", "train.epochs=2")
    check_progress(result.stderr, "features train", 2 * n_train)  # text and image features of each example
    check_progress(result.stderr, "features val", 2 * n_val)
    for epoch in (1, 2):
        check_progress(result.stderr, f"epoch {epoch}/2", n_train)
        check_progress(result.stderr, f"validate {epoch}/2", n_val)
    check_progress(result.stderr, "evaluate", n_test)  # the test split, at the end of training
    assert "loss=" in result.stderr  # the epoch lines show the running loss
    assert "epoch 1/2  loss" not in result.stderr  # quiet: no per-epoch summary line on the console
    log = "\n".join(line.split(" mmfuse.progress: ")[-1] for line in (run / "train.log").read_text().splitlines())
    check_progress(log, "features train", 2 * n_train)  # the run's log file gets the same lines
    check_progress(log, "epoch 2/2", n_train)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"

    result = invoke(runner, "evaluate", run, "--split", "test")
    check_progress(result.stderr, "features evaluate", 2 * n_test)  # features found (memo or cache) count too
    check_progress(result.stderr, "evaluate", n_test)

    result = invoke(runner, "predict", run, root / "dev.jsonl", "--out", tmp_path / "preds.csv")
    check_progress(result.stderr, "features predict", 2 * n_val)
    check_progress(result.stderr, "predict", n_val)

    if report:
        result = invoke(runner, "report", run, "--split", "val", "--examples", "1")
        check_progress(result.stderr, "predict", n_val)
        assert (run / "report" / "report.html").is_file()


def test_train_evaluate_predict_show_progress_off_a_terminal(
    fake_encoders, not_a_terminal: CliRunner, synthetic_root: Path, tmp_path: Path
) -> None:
    """Fast encoders (the fakes behind the builder names), features kept in the process."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(make_config(synthetic_root, tmp_path / "runs", run={"quiet": False}).to_yaml())
    check_every_step(not_a_terminal, cfg, synthetic_root, tmp_path / "runs" / "run", tmp_path, report=False)


@pytest.mark.slow
def test_every_step_shows_progress_off_a_terminal_tiny_encoders(not_a_terminal: CliRunner, tmp_path: Path) -> None:
    """Real (tiny) encoders through the real builders, the persistent feature cache, and the report."""
    cfg, root = tiny_config(tmp_path)
    check_every_step(not_a_terminal, cfg, root, tmp_path / "runs" / "run", tmp_path, report=True)


def test_a_bad_interval_setting_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MMFUSE_PROGRESS_SECONDS", "soon")
    cfg, _ = tiny_config(tmp_path)
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2, result.output
    assert "MMFUSE_PROGRESS_SECONDS='soon'" in result.stderr and "off" in result.stderr
