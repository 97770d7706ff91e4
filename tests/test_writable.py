"""mmfuse._writable on a real read-only filesystem and a real full disk (or the fault hook where a test cannot mount:
see tests/_unwritable.py): the up-front check, the atomic write, and the message of each failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from _unwritable import KINDS, REASONS, unwritable
from mmfuse._writable import UnwritableError, atomic_path, check_writable, free_bytes, write_text_atomic


@pytest.mark.parametrize("kind", KINDS)
def test_check_writable_names_the_folder_the_reason_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    with unwritable(kind, tmp_path / "place", monkeypatch) as place:
        with pytest.raises(UnwritableError) as caught:
            check_writable(place / "sub", what="test folder", fix="pick another folder")
        assert sorted(p.name for p in place.iterdir() if p.name != ".filler") in ([], ["sub"])
    message = str(caught.value)
    assert f"cannot write test folder {str(place / 'sub')!r}: {REASONS[kind]}" in message
    assert "pick another folder" in message and caught.value.path == place / "sub"
    assert isinstance(caught.value, ValueError)  # the CLI ends with it: exit 2


def test_check_writable_makes_a_writable_folder_and_leaves_nothing(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b", what="x", fix="y") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_a_write_that_fills_the_disk_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with unwritable("full", tmp_path / "place", monkeypatch, free=4096) as place:
        assert free_bytes(place) is not None and free_bytes(place) <= 4096
        with pytest.raises(UnwritableError, match=REASONS["full"]):
            write_text_atomic(place / "out.txt", "x" * 100_000, what="output", fix="free space")
        assert not (place / "out.txt").exists()
        assert [p.name for p in place.iterdir() if p.name != ".filler"] == []  # no temporary file either


def test_atomic_path_keeps_the_old_file_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target, what="x", fix="y") as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer broke")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_a_file_whose_bytes_cannot_reach_the_disk_is_a_failed_write(tmp_path, monkeypatch):
    """fsync of a file failing (EIO, or ENOSPC on filesystems that only report a full disk there) is a write that
    failed, not one to skip; only a folder's fsync may be refused (EINVAL on some filesystems)."""
    import errno

    from mmfuse import _writable

    target = tmp_path / "weights.bin"
    target.write_bytes(b"x")

    def refuse(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_writable.os, "fsync", refuse)
    with pytest.raises(OSError, match="Input/output"):
        _writable.fsync_path(target)
    _writable.fsync_path(tmp_path)  # a folder that cannot be flushed is left as it is
    with pytest.raises(_writable.UnwritableError, match=r"weights\.bin"):
        _writable.write_atomic(tmp_path / "weights.bin", b"y", what="weights", fix="free space")
    assert target.read_bytes() == b"x"  # the previous file stays whole
