"""Places mmfuse writes to (run and sweep folders, checkpoints, ``predict --out``, the feature cache): checked before
the work starts, written atomically and durably, and their failures (a full disk, a read-only filesystem, a folder
without write permission) turned into one message that names the path, the reason and the fix.

The one way mmfuse writes a file whole is :func:`write_atomic` (or :func:`atomic_path`, for a writer that needs a
path, such as ``DataFrame.to_csv``): the data goes to a temporary file beside the target, which is flushed to the
disk (``fsync``), renamed over the target, and the folder's entry flushed too. A crash at any moment leaves the old
file or the new one, never a part (at most a stray temporary file); a failure raises :class:`UnwritableError` (or the
subclass a caller names, e.g. ``CheckpointWriteError``) and removes the temporary file. :func:`write_synced` and
:func:`fsync_path` are its two steps, for writers that make a whole folder atomic instead (checkpoints: written into
``<folder>.tmp``, then renamed).

This module imports no other part of mmfuse, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
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
    """A file or folder that cannot be written (full disk, read-only filesystem, no permission, or another failed
    write).

    A ``ValueError``: the CLI ends with its message (exit status 2): ``cannot write <what> '<path>': <reason>;
    <fix>``.

    Attributes:
        path: the file or folder.
        reason: the system's words for it (``No space left on device``).
        errno: the error number (``errno.ENOSPC``), ``None`` when unknown.
        what: what the file is, in the message (``predictions file``).
        fix: how to write somewhere else, as given (the message puts what to do about ``errno`` before it).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, code: int | None, *, what: str, fix: str) -> None:
        self.path, self.reason, self.errno, self.what, self.fix = Path(path), reason, code, what, fix
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


def unwritable(
    error: BaseException,
    path: str | os.PathLike[str],
    *,
    what: str,
    fix: str,
    kind: type[UnwritableError] = UnwritableError,
) -> UnwritableError:
    """The :class:`UnwritableError` (or subclass ``kind``) for ``error`` raised while writing ``path`` (the error's
    own file name wins when it has one)."""
    where = getattr(error, "filename", None) or path
    return kind(where, reason_of(error), error_code(error), what=what, fix=fix)


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


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flushes a file, or on POSIX a folder's entries (a rename in it), to the disk; a filesystem that cannot flush a
    folder (Windows, ``EINVAL`` on some filesystems) is left as it is.

    Raises:
        OSError: a file's bytes could not reach the disk (``EIO``, ``ENOSPC``): the write failed, and the callers
            turn this into their one message."""
    path = Path(path)
    if os.name == "nt" and path.is_dir():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` and flushes it to the disk, so that a rename after it never exposes a short file
    (a full disk may only say so when the bytes reach it). Raises the plain ``OSError`` (:data:`FAULT_ENV` included):
    :func:`write_atomic` and the checkpoint writer turn it into their error."""
    raise_injected(path)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    *,
    what: str,
    fix: str,
    tmp: str | os.PathLike[str] | None = None,
    on_step: Callable[[str], None] | None = None,
    kind: type[UnwritableError] = UnwritableError,
) -> None:
    """Writes ``data`` (a ``str`` as UTF-8) to ``path`` whole or not at all: to ``tmp`` (default: a unique
    ``.tmp-*`` name beside ``path``), flushed to the disk, renamed to ``path``, and the folder's entry flushed.

    Args:
        path: the file.
        data: its content.
        what: what it is, for the message (``run file``).
        fix: how to write somewhere else (``set run.out_dir to a writable folder``).
        tmp: the temporary file, where a crash-recovery procedure looks for a fixed name (``metrics.jsonl.tmp``).
        on_step: called with ``written`` between the write and the rename (crash tests' fault hook).
        kind: the error raised (a subclass of :class:`UnwritableError` with the same constructor).

    Raises:
        UnwritableError: (``kind``) any ``OSError`` of the write or the rename (a full disk, a read-only filesystem,
            no permission, an I/O error); the temporary file is removed and ``path`` is as it was.
    """
    path = Path(path)
    staged = Path(tmp) if tmp is not None else _temporary(path)
    try:
        write_synced(staged, data.encode("utf-8") if isinstance(data, str) else data)
        if on_step is not None:
            on_step("written")
        raise_injected(path)
        os.replace(staged, path)
    except BaseException as e:
        _remove(staged)
        if isinstance(e, OSError) or is_write_failure(e):  # named by the file the user knows, not the temporary one
            raise kind(path, reason_of(e), error_code(e), what=what, fix=fix) from None
        raise
    fsync_path(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, what: str, fix: str) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, for a writer that needs a path (``frame.to_csv(tmp)``); when the
    block ends it is flushed to the disk and renamed to ``path`` as :func:`write_atomic` does, when it fails
    removed, so no half-written file ever carries the real name::

        with atomic_path(out, what="predictions file", fix="pass --out in a writable folder") as tmp:
            frame.to_csv(tmp)

    Raises:
        UnwritableError: the block or the rename failed for lack of space or permission (other errors of the
            block, which may read as well as write, pass through as they are).
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        raise_injected(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if is_write_failure(e):
            named = getattr(e, "filename", None)
            where = path if named is None or str(named) == str(tmp) else named  # the temporary file: the target
            raise UnwritableError(where, reason_of(e), error_code(e), what=what, fix=fix) from None
        raise
    fsync_path(path.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, what: str, fix: str) -> None:
    """:func:`write_atomic` of a text (the name earlier callers use)."""
    write_atomic(path, text, what=what, fix=fix)


def is_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a temporary file of :func:`write_atomic` / :func:`atomic_path` (a crash may leave one)."""
    return Path(path).name.startswith(TMP_PREFIX)


def _temporary(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone, or never made (a read-only filesystem)
        path.unlink()
