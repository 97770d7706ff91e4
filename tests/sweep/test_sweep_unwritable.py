"""A sweep folder on a read-only filesystem or a full disk: exit status 2 and one message naming the folder, the
reason and the fix, before any trial runs (see tests/_unwritable.py for how the places are made)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _unwritable import KINDS, REASONS, leftovers, unwritable
from mmfuse.cli import app


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_into_an_unwritable_folder_stops_before_any_trial(
    base_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    file = tmp_path / "sweep.yaml"
    base = copy.deepcopy(base_config)
    file.write_text(yaml.safe_dump({"base": base, "grid": {"head.params.dropout": [0.0, 0.2]}, "baselines": False}))
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        result = CliRunner().invoke(app, ["sweep", str(file), "--out", str(place / "sweep")])
        assert not (place / "sweep").exists() or not any((place / "sweep").iterdir())
        assert leftovers(place) == []
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert REASONS[kind] in lines[0] and str(place / "sweep") in lines[0] and "--out" in lines[0]
