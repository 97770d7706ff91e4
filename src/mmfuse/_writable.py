"""Places mmfuse writes to (run and sweep folders, ``predict --out``, the feature cache): checked before the work
starts, written atomically, and their failures (a full disk, a read-only filesystem, a folder without write
permission) turned into one message that names the path, the reason and the fix.

This module imports no other part of mmfuse, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITE_ERRNOS = frozenset(
    code
    for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
    if code is not None
)
"""Error numbers of a place that cannot be written: full, read-only, not permitted."""

FAULT_ENV = "MMFUSE_TEST_UNWRITABLE"
"""A test hook for machines where a test cannot mount a read-only or a full filesystem: ``ERRNO:FOLDER``
(``EROFS:/tmp/x``, ``ENOSPC:/tmp/x``) makes every write this module checks or makes under ``FOLDER`` fail with that
error, and a full disk (``ENOSPC``) report no free space. Unset, it costs one environment lookup."""

TMP_PREFIX = ".tmp-"
"""Prefix of the temporary files :func:`atomic_path` writes before renaming them into place."""


class UnwritableError(ValueError):
    """A file or folder that cannot be written (full disk, read-only filesystem, no permission).

    A ``ValueError``: the CLI ends with its message (exit status 2).

    Attributes:
        path: the file or folder.
        reason: the system's words for it (``No space left on device``).
        errno: the error number (``errno.ENOSPC``), ``None`` when unknown.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, code: int | None, *, what: str, fix: str) -> None:
        self.path, self.reason, self.errno = Path(path), reason, code
        super().__init__(f"cannot write {what} {str(path)!r}: {reason}; {fix_for(code, fix)}")


def error_code(error: BaseException) -> int | None:
    """The error number of a failed write: an ``OSError``'s ``errno``, or the ``os error N`` / ``code: N`` that
    safetensors' ``SafetensorError`` carries only in its text."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"os error (\d+)|code: (\d+)", str(error))
    return int(found.group(1) or found.group(2)) if found else None


def is_write_failure(error: BaseException) -> bool:
    """Whether ``error`` says the place cannot be written (see :data:`WRITE_ERRNOS`): an ``OSError``, or
    safetensors' ``SafetensorError`` wrapping one."""
    if not isinstance(error, OSError) and type(error).__name__ != "SafetensorError":
        return False
    return error_code(error) in WRITE_ERRNOS


def reason_of(error: BaseException) -> str:
    """The system's words for a failed write (``No space left on device``)."""
    code = error_code(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return os.strerror(code) if code is not None else str(error)


def fix_for(code: int | None, elsewhere: str) -> str:
    """What to do about a failed write with error number ``code``; ``elsewhere`` says how to write somewhere else
    (``set run.out_dir to a writable folder``)."""
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return f"free space on that disk, or {elsewhere}"
    if code == errno.EROFS:
        return f"the filesystem is mounted read-only: {elsewhere}"
    if code in (errno.EACCES, errno.EPERM):
        return f"give this user write permission there, or {elsewhere}"
    return elsewhere


def unwritable(error: BaseException, path: str | os.PathLike[str], *, what: str, fix: str) -> UnwritableError:
    """The :class:`UnwritableError` for ``error`` raised while writing ``path`` (the error's own file name wins when
    it has one)."""
    where = getattr(error, "filename", None) or path
    return UnwritableError(where, reason_of(error), error_code(error), what=what, fix=fix)


def injected_fault(path: str | os.PathLike[str]) -> int | None:
    """The error number :data:`FAULT_ENV` injects for writes under ``path``, or ``None``."""
    raw = os.environ.get(FAULT_ENV, "")
    if not raw:
        return None
    name, _, folder = raw.partition(":")
    code = getattr(errno, name, None)
    if code is None or not folder:
        raise ValueError(f"{FAULT_ENV}={raw!r}: expected ERRNO:FOLDER, e.g. ENOSPC:/tmp/full")
    inside = Path(path).absolute()
    return code if inside == Path(folder).absolute() or Path(folder).absolute() in inside.parents else None


def raise_injected(path: str | os.PathLike[str]) -> None:
    """Raises the ``OSError`` :data:`FAULT_ENV` injects for a write of ``path``, if any."""
    code = injected_fault(path)
    if code is not None:
        raise OSError(code, os.strerror(code), str(path))


def check_writable(folder: str | os.PathLike[str], *, what: str, fix: str) -> Path:
    """Makes ``folder`` (and its parents) and proves it writable by creating and removing a small file in it.

    Args:
        folder: the folder.
        what: what it is, for the message (``run folder``).
        fix: how to write somewhere else (``set run.out_dir to a writable folder``).

    Raises:
        UnwritableError: it cannot be made or written; nothing is left behind but the folders that could be made.
    """
    folder = Path(folder)
    probe = folder / f"{TMP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        raise_injected(probe)
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")
            f.flush()
            os.fsync(f.fileno())  # a full disk may only say so when the byte reaches it
    except OSError as e:
        _remove(probe)
        if not is_write_failure(e):
            raise
        raise UnwritableError(folder, reason_of(e), error_code(e), what=what, fix=fix) from None
    _remove(probe)
    return folder


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent); ``None`` when unknown."""
    path = Path(path).absolute()
    if injected_fault(path) == errno.ENOSPC:
        return 0
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, what: str, fix: str) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends, removed when it fails,
    so no half-written file ever carries the real name::

        with atomic_path(out, what="predictions file", fix="pass --out in a writable folder") as tmp:
            frame.to_csv(tmp)

    Raises:
        UnwritableError: the block or the rename failed for lack of space or permission.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        yield tmp
        raise_injected(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if is_write_failure(e):
            raise unwritable(e, path, what=what, fix=fix) from None
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, what: str, fix: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, what=what, fix=fix) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone, or never made (a read-only filesystem)
        path.unlink()
