"""Places that cannot be written, for the fault tests: a read-only filesystem (a read-only bind mount of a temporary
folder) and a full disk (a 1 MiB tmpfs filled up).

Both need the right to mount (root here, and in CI's container). Where a test cannot mount (``mount`` refused, or
``MMFUSE_TEST_NO_MOUNT=1`` to try this path), the same place is made by mmfuse's fault hook
(``MMFUSE_TEST_UNWRITABLE``, see :mod:`mmfuse._writable`): every write mmfuse checks or makes under it fails with the
same error, so the test still runs and asserts; nothing is skipped.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

FAULT_ENV = "MMFUSE_TEST_UNWRITABLE"
"""mmfuse's fault hook (mmfuse._writable.FAULT_ENV; named here so these tests also run against older code)."""

KINDS = ("read-only", "full")
"""The two kinds of unwritable place, as the tests parametrize them."""

REASONS = {"read-only": "Read-only file system", "full": "No space left on device"}
"""What the system says of each kind (``os.strerror``), which every message must quote."""
assert {"read-only": os.strerror(errno.EROFS), "full": os.strerror(errno.ENOSPC)} == REASONS


def _mount(*args: str) -> bool:
    if os.environ.get("MMFUSE_TEST_NO_MOUNT") == "1":
        return False
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextmanager
def unwritable(
    kind: str, where: Path, monkeypatch: pytest.MonkeyPatch, *, free: int = 0, holding: Path | None = None
) -> Iterator[Path]:
    """A folder at ``where`` that cannot be written: ``read-only`` or ``full`` (a 1 MiB tmpfs with about ``free``
    bytes left, ``free`` a multiple of the 4 KiB page). Unmounted afterwards.

    Args:
        holding: a folder copied into it first (``where/<its name>``), e.g. a run to resume.

    Yields the folder.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    where.mkdir(parents=True)
    source = where.with_name(where.name + "-source")
    if kind == "read-only":
        source.mkdir()
        _copy(holding, source)
        mounted = _mount("--bind", str(source), str(where))
        if mounted and not _mount("-o", "remount,ro,bind", str(where)):
            _umount(where)
            mounted = False
    else:
        mounted = _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where))
    try:
        if kind == "full" or not mounted:
            _copy(holding, where)
        if kind == "full" and mounted:
            fill(where, free)
        if not mounted:  # the fault hook stands in for the mount
            monkeypatch.setenv(FAULT_ENV, f"{'EROFS' if kind == 'read-only' else 'ENOSPC'}:{where}")
        yield where
    finally:
        if mounted:
            _umount(where)


def _copy(holding: Path | None, into: Path) -> None:
    if holding is not None:
        shutil.copytree(holding, into / holding.name)


def fill(folder: Path, free: int) -> None:
    """Fills the filesystem of ``folder`` up to about ``free`` bytes left (one hidden file)."""
    filler = folder / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\0" * 4096
        while True:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(size - free, 0))


class FullDiskStream:
    """A log file's stream on a disk that is full, for where a test cannot mount one (the fault hook stands in):
    every write and flush fails with ``ENOSPC``, as a real full disk's does."""

    name = "<full disk>"

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        pass


def full_log_stream(place: Path, name: str) -> IO[str] | FullDiskStream:
    """A text stream to log to in ``place`` (a ``full`` place of :func:`unwritable`): the file ``place/name`` on the
    mounted full disk, or a :class:`FullDiskStream` where the fault hook stands in for the mount (it fails only the
    writes mmfuse makes itself, not a log handler's). Close it with ``contextlib.suppress(OSError)``: its buffer
    cannot be flushed to the full disk either."""
    if os.environ.get(FAULT_ENV):
        return FullDiskStream()
    return open(place / name, "w")  # the caller closes it


def full_log_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the fault hook stands in for a full disk's mount, makes every ``logging.FileHandler`` (a run's log)
    write to a :class:`FullDiskStream`; on the mounted full disk the real files fail by themselves."""
    if os.environ.get(FAULT_ENV):
        monkeypatch.setattr(logging.FileHandler, "_open", lambda self: FullDiskStream())


def leftovers(folder: Path) -> list[str]:
    """Temporary or half-written files under ``folder`` (what a later run could trip over)."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.name.startswith(".tmp") or p.name.endswith(".tmp") or (p.is_file() and p.stat().st_size == 0)
    )
