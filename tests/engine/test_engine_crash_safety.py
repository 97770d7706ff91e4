"""Crash safety of the epoch commit: every state a kill can leave in a run folder (the table in
:mod:`mmfuse.engine.checkpoint`) is built on disk and resumed, a real process is ended at each write by the
test-only fault hook (``MMFUSE_FAULT``) and resumed, and a write that fails (full disk, read-only folder) is one
typed error (exit 2 in the CLI) that leaves nothing half written; ``--resume`` then ends exactly like an
uninterrupted run: the same final weights, ``metrics.jsonl`` and summary (threshold included)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_support import build_fake_image, build_fake_text, make_config, scripted_validate
from safetensors import SafetensorError
from safetensors.torch import load_file
from typer.testing import CliRunner

import mmfuse.encoders
from mmfuse.cli import app
from mmfuse.engine import checkpoint as ckpt
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.engine.run_dir import RunDir
from mmfuse.engine.trainer import Trainer
from mmfuse.model import checkpoint as model_ckpt

LAUNCHER = Path(__file__).with_name("_crash_train.py")
_TIMING = ("seconds", "examples_per_s")


def _patch(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
    mp.setattr(mmfuse.encoders, "build_image_encoder", build_fake_image, raising=False)
    mp.setattr(Trainer, "_validate", scripted_validate(Trainer._validate))


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake encoders, and validation where every epoch improves (see ``scripted_validate``)."""
    _patch(monkeypatch)


@pytest.fixture(scope="module")
def reference(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted 2-epoch run (``ref``, its test metrics in the summary) and copies of its folder right after
    the commit of epoch 1 (``e1``) and of epoch 2 (``e2``, before the summary): the states around each commit."""
    root = tmp_path_factory.mktemp("crash_reference")
    cfg = make_config(synthetic_root, root, run={"name": "ref"})
    snaps = {"ref": root / "ref", "e1": root / "e1", "e2": root / "e2", "config": root / "cfg.yaml"}
    snaps["config"].write_text(cfg.to_yaml(), encoding="utf-8")

    def snapshot(record: dict[str, Any]) -> None:  # called after the epoch's commit
        shutil.copytree(root / "ref", snaps[f"e{record['epoch']}"])

    with pytest.MonkeyPatch.context() as mp:
        _patch(mp)
        clf = MultimodalClassifier(cfg)
        clf.fit(callbacks=[snapshot])
    assert [r["best"] for r in clf.history] == [True, True]  # each commit wrote the best checkpoint
    assert clf.summary["threshold"] is not None and "test" in clf.summary
    return snaps


# ------------------------------------------------------------------------------------------------ comparing runs


def _records(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in RunDir(run).history()]


def _weights(run: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / which / "model.safetensors"))


def _summary(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {k: v for k, v in summary.items() if k not in ("seconds", "run_dir")}


def assert_same_run(run: Path, reference: Path) -> None:
    """``run`` ended as the uninterrupted ``reference``: metrics lines, final and best weights, summary; and no
    ``.tmp`` / ``.old`` is left in it.

    Both are replays of the same operations on the same data (see test_engine_training's tolerances): bitwise equal
    in practice; the tolerances only absorb a BLAS that picks another code path for another memory alignment.
    """
    ours, theirs = _records(run), _records(reference)
    assert [r["epoch"] for r in ours] == [r["epoch"] for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["step"] == b["step"] and a["best"] == b["best"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-9)
        assert a["val"] == pytest.approx(b["val"], rel=1e-6, abs=1e-9)
    for which in ("last", "best"):
        a, b = _weights(run, which), _weights(reference, which)
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
        meta = json.loads((run / "checkpoints" / which / "meta.json").read_text(encoding="utf-8"))
        assert meta["epoch"] == json.loads((reference / "checkpoints" / which / "meta.json").read_text())["epoch"]
    ours_s, theirs_s = _summary(run), _summary(reference)
    assert ours_s.keys() == theirs_s.keys()
    for key in ("status", "best_epoch", "epochs_run", "selection_metric", "classes"):
        assert ours_s[key] == theirs_s[key], key
    assert ours_s["threshold"] is not None
    for key in ("threshold", "best_value", "val", "test"):
        _assert_close(ours_s[key], theirs_s[key], key)
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.suffix in (".tmp", ".old")]
    assert not leftovers


def _assert_close(a: Any, b: Any, where: str) -> None:
    """Nested dicts and lists equal, numbers to the replay tolerance of :func:`assert_same_run`."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for key in b:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where


# ------------------------------------------------------------------------------------------------ building states


def _copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _partial_checkpoint(src: Path, dst: Path) -> None:
    """A checkpoint folder killed while written: half of its weights file, nothing else."""
    dst.mkdir(parents=True)
    shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
    _truncate(dst / "model.safetensors")


def _state_of_commit_2(step: str) -> Callable[[dict[str, Path], Path], None]:
    """The run folder killed at ``step`` of epoch 2's commit, built from the copies before (e1) and after (e2)."""

    def build(snaps: dict[str, Path], run: Path) -> None:
        e2 = snaps["e2"] / "checkpoints"
        c = run / "checkpoints"
        if step.startswith("last:"):
            _copy(snaps["e1"], run)
            if step == "last:weights":
                _partial_checkpoint(e2 / "last", c / "last.tmp")
            elif step == "last:written":
                _copy(e2 / "last", c / "last.tmp")
            elif step == "last:moved":  # between the two renames: the "meta.json not found" state
                os.replace(c / "last", c / "last.old")
                _copy(e2 / "last", c / "last.tmp")
            elif step == "last:replaced":
                os.replace(c / "last", c / "last.old")
                _copy(e2 / "last", c / "last")
            return
        _copy(snaps["e1"], run)  # the last checkpoint of epoch 2 is in place; metrics.jsonl has epoch 1 only
        shutil.rmtree(c / "last")
        _copy(e2 / "last", c / "last")
        if step == "best:weights":  # the kill while best.tmp existed
            _partial_checkpoint(e2 / "best", c / "best.tmp")
        elif step == "best:written":
            _copy(e2 / "best", c / "best.tmp")
        elif step == "best:moved":
            os.replace(c / "best", c / "best.old")
            _copy(e2 / "best", c / "best.tmp")
        elif step == "best:replaced":
            os.replace(c / "best", c / "best.old")
            _copy(e2 / "best", c / "best")
        elif step in ("metrics:written", "metrics:partial-line"):
            shutil.rmtree(c / "best")
            _copy(e2 / "best", c / "best")
            if step == "metrics:written":
                shutil.copyfile(snaps["e2"] / "metrics.jsonl", run / "metrics.jsonl.tmp")
                _truncate(run / "metrics.jsonl.tmp")
            else:  # an older mmfuse appended the line: killed in the middle of it
                line = (snaps["e2"] / "metrics.jsonl").read_text().splitlines()[1]
                with (run / "metrics.jsonl").open("a") as f:
                    f.write(line[: len(line) // 2])

    return build


def _first_epoch(step: str) -> Callable[[dict[str, Path], Path], None]:
    """Killed in epoch 1's commit: before it (no checkpoint at all), or in its best write (issue: "a 1-epoch run
    killed in the best write resumes as completed with no best checkpoint and an empty metrics.jsonl")."""

    def build(snaps: dict[str, Path], run: Path) -> None:
        _copy(snaps["e1"], run)
        c = run / "checkpoints"
        (run / "metrics.jsonl").write_text("")
        shutil.rmtree(c / "best")
        if step == "last:weights":
            shutil.rmtree(c / "last")
            _partial_checkpoint(snaps["e1"] / "checkpoints" / "last", c / "last.tmp")
        elif step == "last:written":
            os.replace(c / "last", c / "last.tmp")
        elif step == "best:weights":
            _partial_checkpoint(snaps["e1"] / "checkpoints" / "best", c / "best.tmp")

    return build


def _summary_state(which: str) -> Callable[[dict[str, Path], Path], None]:
    def build(snaps: dict[str, Path], run: Path) -> None:
        if which == "summary:written":  # every epoch committed, the summary's tmp half written
            _copy(snaps["e2"], run)
            shutil.copyfile(snaps["ref"] / "summary.json", run / "summary.json.tmp")
            _truncate(run / "summary.json.tmp")
        else:  # the trainer's summary written, killed before fit added the test metrics
            _copy(snaps["ref"], run)
            summary = json.loads((run / "summary.json").read_text())
            del summary["test"]
            (run / "summary.json").write_text(json.dumps(summary))

    return build


STATES: dict[str, Callable[[dict[str, Path], Path], None]] = {
    **{f"e2-{s}": _state_of_commit_2(s) for s in ("last:weights", "last:written", "last:moved", "last:replaced")},
    **{f"e2-{s}": _state_of_commit_2(s) for s in ("best:weights", "best:written", "best:moved", "best:replaced")},
    **{f"e2-{s}": _state_of_commit_2(s) for s in ("metrics:written", "metrics:partial-line")},
    **{f"e1-{s}": _first_epoch(s) for s in ("last:weights", "last:written", "best:weights")},
    "summary:written": _summary_state("summary:written"),
    "summary-without-test": _summary_state("without-test"),
}


@pytest.mark.parametrize("state", list(STATES))
def test_resume_from_every_state_of_the_commit_equals_the_uninterrupted_run(
    scripted, reference: dict[str, Path], tmp_path: Path, state: str
) -> None:
    run = tmp_path / "run"
    STATES[state](reference, run)
    MultimodalClassifier.resume(run)
    assert_same_run(run, reference["ref"])
    assert MultimodalClassifier.load(run).threshold is not None  # evaluate/predict read the best checkpoint


def test_resume_after_an_early_stop_killed_before_its_summary_stops_again(
    fake_encoders, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early stopping is decided after the epoch's commit: a run killed before its summary must stop again on
    resume (it used to train the remaining epochs)."""
    monkeypatch.setattr(Trainer, "_validate", scripted_validate(Trainer._validate, {1: 0.7, 2: 0.6, 3: 0.8, 4: 0.9}))
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 4, "early_stopping_patience": 1})
    killed = tmp_path / "killed"

    def snapshot(record: dict[str, Any]) -> None:
        if record["epoch"] == 2:
            shutil.copytree(tmp_path / "run", killed)

    clf = MultimodalClassifier(cfg)
    clf.fit(callbacks=[snapshot])
    assert clf.summary["status"] == "early_stopped" and clf.summary["epochs_run"] == 2
    MultimodalClassifier.resume(killed)
    assert_same_run(killed, tmp_path / "run")


# ------------------------------------------------------------------------------------------------ real kills


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "last:weights@2", "last:written@2", "last:moved@2", "last:replaced@2",
        "best:weights@2", "best:written@2", "best:moved@2", "best:replaced@2",
        "metrics:written@2", "summary:written@2", "last:weights@1", "best:weights@1",
    ],
)  # fmt: skip
def test_a_process_killed_at_each_write_resumes_to_the_uninterrupted_run(
    scripted, reference: dict[str, Path], tmp_path: Path, point: str
) -> None:
    """The real process ends (``os._exit``, as ``kill -9``) at each step of the commit; ``--resume`` then ends as
    the uninterrupted run."""
    cfg = yaml_config(reference["config"], tmp_path)
    env = {**os.environ, ckpt.FAULT_ENV: point, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), str(cfg)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == ckpt.FAULT_EXIT, done.stderr[-3000:]
    run = tmp_path / "ref"
    MultimodalClassifier.resume(run)
    assert_same_run(run, reference["ref"])


def yaml_config(config: Path, out: Path) -> Path:
    """The reference's config writing its run under ``out``."""
    import yaml

    data = yaml.safe_load(config.read_text())
    data["run"]["out_dir"] = str(out)
    path = out / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ write errors


def _second_call_fails(real: Callable[..., Any], error: BaseException, name: str | None = None):
    """``real`` raising ``error`` the second time it writes (a file called ``name``): in epoch 2's commit."""
    calls: list[Any] = []

    def write(path: Any, *args: Any, **kwargs: Any) -> Any:
        if name is None or Path(path).name == name:
            calls.append(path)
            if len(calls) == 2:
                raise error
        return real(path, *args, **kwargs)

    return write


_ENOSPC = "No space left on device"
_SAFETENSORS_ENOSPC = SafetensorError(
    f'Error while serializing: IoError(Os {{ code: 28, kind: StorageFull, message: "{_ENOSPC}" }})'
)


@pytest.mark.parametrize(
    ("target", "error", "reason"),
    [
        ("meta.json", OSError(errno.ENOSPC, _ENOSPC), _ENOSPC),
        ("training_state.pt", OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        ("safetensors", _SAFETENSORS_ENOSPC, _ENOSPC),
    ],
    ids=["enospc-meta", "erofs-state", "safetensors-enospc"],
)
def test_a_failed_checkpoint_write_is_one_error_and_resume_then_finishes_the_run(
    scripted,
    reference: dict[str, Path],
    synthetic_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    error: BaseException,
    reason: str,
) -> None:
    with monkeypatch.context() as mp:
        if target == "safetensors":
            mp.setattr(model_ckpt, "save_file", _second_call_fails(model_ckpt.save_file, error))
        else:
            mp.setattr(model_ckpt, "write_synced", _second_call_fails(model_ckpt.write_synced, error, target))
        with pytest.raises(ckpt.CheckpointWriteError) as caught:
            MultimodalClassifier(make_config(synthetic_root, tmp_path, run={"name": "ref"})).fit()
    message = str(caught.value)
    fix = "the filesystem is mounted read-only" if reason == "Read-only file system" else "free space on that disk"
    assert reason in message and fix in message and "last.tmp" in message and f"--resume {tmp_path / 'ref'}" in message
    assert caught.value.errno == (error.errno if isinstance(error, OSError) else errno.ENOSPC)
    run = tmp_path / "ref"
    assert not (run / "checkpoints" / "last.tmp").exists()  # nothing half written is left
    assert json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["epoch"] == 1
    MultimodalClassifier.resume(run)  # once the disk has room
    assert_same_run(run, reference["ref"])


def test_cli_a_full_disk_during_a_checkpoint_is_exit_2_with_one_message(
    scripted, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = OSError(errno.ENOSPC, _ENOSPC)
    monkeypatch.setattr(model_ckpt, "write_synced", _second_call_fails(model_ckpt.write_synced, error, "meta.json"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(make_config(synthetic_root, tmp_path / "runs").to_yaml(), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: cannot write checkpoint") and _ENOSPC in lines[0] and "free space" in lines[0]
    assert str(tmp_path / "runs" / "run" / "checkpoints" / "last.tmp") in lines[0]


@pytest.mark.parametrize(("name", "nth"), [("metrics.jsonl", 2), ("summary.json", 1)])
def test_a_failed_metrics_or_summary_write_is_the_same_typed_error(
    scripted, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, nth: int
) -> None:
    """``nth``: metrics.jsonl's first write is the empty file of a new run (before training: checked up front);
    the second is epoch 1's commit. The summary is written once, after the last epoch."""
    real, calls = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == name:
            calls.append(dst)
            if len(calls) == nth:
                raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    pattern = rf"{name.replace('.', '[.]')}.*Permission denied.*give this user write permission there.*--resume"
    with pytest.raises(ckpt.CheckpointWriteError, match=pattern):
        MultimodalClassifier(make_config(synthetic_root, tmp_path)).fit()
    assert not (tmp_path / "run" / f"{name}.tmp").exists()
