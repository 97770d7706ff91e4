"""How CLI commands end on a user error: the message on stderr, exit status 2, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, TypeVar

import typer

T = TypeVar("T")


def fail(message: str) -> NoReturn:
    """Prints ``error: message`` on stderr and exits with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def guard(fn: Callable[[], T]) -> T:
    """Runs ``fn``; a ``ValueError`` or ``FileNotFoundError`` (a bad config, file or value) ends the command via
    :func:`fail` with its message."""
    try:
        return fn()
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
