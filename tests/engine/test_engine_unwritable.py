"""A run folder or a ``predict --out`` / ``evaluate --json`` file on a read-only filesystem or a full disk: exit
status 2 and one message naming the path, the reason and the fix (no traceback), checked before the work starts, and
no half-written file left behind (see tests/_unwritable.py for how the places are made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _engine_support import make_config
from typer.testing import CliRunner

from _unwritable import KINDS, REASONS, leftovers, unwritable
from mmfuse.cli import app


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_message(result) -> str:
    """The command ended with exit 2 and a single ``error:`` line, no traceback; returns that line."""
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def cfg_file(tmp_path: Path, synthetic_root: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(make_config(synthetic_root, tmp_path / "runs", train={"epochs": 1}).to_yaml(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """A one-epoch run of the fake encoders (module-scoped: the fake builders are patched here by hand)."""
    from _engine_support import build_fake_image, build_fake_text

    import mmfuse.encoders

    out = tmp_path_factory.mktemp("trained")
    cfg = out / "cfg.yaml"
    cfg.write_text(make_config(synthetic_root, out / "runs", train={"epochs": 1}).to_yaml(), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
        patch.setattr(mmfuse.encoders, "build_image_encoder", build_fake_image, raising=False)
        result = invoke("train", cfg)
    assert result.exit_code == 0, result.output
    return out / "runs" / "run"


@pytest.mark.parametrize("kind", KINDS)
def test_train_into_an_unwritable_run_folder_stops_before_reading_data(
    fake_encoders, cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        result = invoke("train", cfg_file, f"run.out_dir={place / 'runs'}")
        message = one_message(result)
        assert not (place / "runs" / "run").exists()  # nothing trained, nothing written
        assert leftovers(place) == []
    assert REASONS[kind] in message and str(place / "runs") in message
    assert "run.out_dir" in message  # the fix
    assert "features" not in result.stderr and "epoch" not in result.stderr  # stopped before any data or training


@pytest.mark.parametrize("kind", KINDS)
def test_resume_in_an_unwritable_run_folder_stops_before_reading_data(
    fake_encoders, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with unwritable(kind, tmp_path / "place", monkeypatch, holding=trained_run) as place:
        run = place / trained_run.name
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        message = one_message(invoke("train", "--resume", run, "train.epochs=2"))
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # the run is untouched
    assert REASONS[kind] in message and str(run) in message and "run.out_dir" in message


def test_a_disk_that_fills_up_while_the_run_starts(
    fake_encoders, cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The up-front check passes (a few kB free), then the run's files fill the disk: exit 2 with the reason, and
    each file there is whole or absent (written under a temporary name first)."""
    with unwritable("full", tmp_path / "place", monkeypatch, free=4096) as place:
        result = invoke("train", cfg_file, f"run.out_dir={place}")
        message = one_message(result)
        assert leftovers(place) == [] or leftovers(place) == ["run/train.log"]  # the log may stay empty
        run = place / "run"
        if (run / "config.yaml").exists():
            assert yaml.safe_load((run / "config.yaml").read_text())["run"]["name"] == "run"
        if (run / "label_map.json").exists():
            assert json.loads((run / "label_map.json").read_text())
    assert REASONS["full"] in message and str(place) in message


@pytest.mark.parametrize("kind", KINDS)
def test_predict_to_an_unwritable_place_stops_before_loading_the_model(
    fake_encoders, trained_run: Path, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        out = place / "preds.csv"
        message = one_message(invoke("predict", trained_run, synthetic_root / "test.jsonl", "--out", out))
        assert not out.exists() and leftovers(place) == []
    assert REASONS[kind] in message and str(place) in message and "--out" in message


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_json_to_an_unwritable_place(
    fake_encoders, trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        out = place / "eval.json"
        result = invoke("evaluate", trained_run, "--split", "test", "--json", out)
        message = one_message(result)
        assert not out.exists() and leftovers(place) == []
    assert REASONS[kind] in message and str(place) in message and "--json" in message
    assert "accuracy" not in result.stdout  # checked before evaluating, not after
