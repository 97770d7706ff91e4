"""Rewriting a checkpoint's ``meta.json`` (what calibration does after training) on a read-only filesystem or a full
disk: one :class:`~mmfuse.model.CheckpointWriteError` naming the file, the reason and the fix, the old file whole,
nothing left behind (real mounts where the test may mount, else mmfuse's fault hook: tests/_unwritable.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _unwritable import KINDS, REASONS, leftovers, unwritable
from mmfuse._writable import UnwritableError
from mmfuse.model.checkpoint import CheckpointError, CheckpointWriteError, read_meta, update_meta


@pytest.mark.parametrize("kind", KINDS)
def test_update_meta_on_an_unwritable_place_is_one_clean_error(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "best"
    checkpoint.mkdir()
    meta = {"format_version": 2, "classes": ["0", "1"], "temperature": None, "padding": "x" * 20_000}
    (checkpoint / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with unwritable(kind, tmp_path / "place", monkeypatch, holding=checkpoint) as place:
        folder = place / "best"
        with pytest.raises(CheckpointWriteError) as caught:
            update_meta(folder, {"temperature": 1.5, "padding": "y" * 40_000})  # more than a full disk has left
        assert read_meta(folder) == meta  # the old file, whole
        assert leftovers(place) == []  # no temporary file left
    error = caught.value
    assert isinstance(error, UnwritableError) and isinstance(error, CheckpointError)  # both families catch it
    message = str(error)
    assert message.startswith(f"cannot write checkpoint metadata {str(folder / 'meta.json')!r}"), message
    assert f": {REASONS[kind]}; " in message and "run.out_dir" in message  # the reason, then the fix
    fix = "the filesystem is mounted read-only" if kind == "read-only" else "free space on that disk"
    assert fix in message and error.reason == REASONS[kind] and error.path == folder / "meta.json"


def test_update_meta_still_writes_whole(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"format_version": 2, "temperature": None}), encoding="utf-8")
    assert update_meta(tmp_path, {"temperature": 2.0}) == {"format_version": 2, "temperature": 2.0}
    assert read_meta(tmp_path)["temperature"] == 2.0 and [p.name for p in tmp_path.iterdir()] == ["meta.json"]
