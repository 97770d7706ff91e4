"""How CLI commands end on a user error: the message on stderr, exit status 2, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

from mmfuse._writable import error_code, fix_for, is_write_failure, reason_of, unwritable

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def write_failure(error: BaseException) -> ValueError | None:
    """A failed write that no up-front check caught (the disk filled up meanwhile, a folder turned read-only) as a
    user error naming the path, the reason and the fix; ``None`` for any other error."""
    if not is_write_failure(error):
        return None
    path = getattr(error, "filename", None)
    if path is None:  # a write to an open file: the system does not say which
        fix = fix_for(error_code(error), "write to another folder")
        return ValueError(f"a write failed: {reason_of(error)}; {fix}")
    return unwritable(error, path, what="to", fix="write to another folder")


def guard(fn: Callable[[], T]) -> T:
    """Runs ``fn``; a ``ValueError`` or ``FileNotFoundError`` (a bad config, file or value), or a write that failed
    for lack of space or permission, ends the command via :func:`fail` with its message."""
    try:
        return fn()
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    except Exception as e:
        if (failure := write_failure(e)) is None:
            raise
        fail(str(failure))
