"""Resolving dataset-relative paths, refusing those that escape the dataset root."""

from __future__ import annotations

import os
from pathlib import Path

ALLOW_COMMAND_LINE = "on the command line: data.allow_outside_root=true"
ALLOW_HINT = f"allow_outside_root: true under data: in the config ({ALLOW_COMMAND_LINE})"
"""How to accept paths outside the root, as every refusal says it."""


class OutsideRootError(ValueError):
    """A path from the data resolves outside the dataset root (``..``, an absolute path, or a symlink).

    Attributes:
        reason: the short cause for reports, with the setting that accepts it (``outside the dataset root through
            the symlink 'img' -> '/mnt/big/img'; set allow_outside_root: true in the data config to follow it``).
        resolved: where the path leads.
    """

    reason: str = "outside the dataset root"
    resolved: Path | None = None


def _outside(what: str, value: str | Path, resolved: Path, root: Path) -> OutsideRootError:
    """The refusal of ``value``: the full message names the path, where it leads (and through which symlink) and
    both ways to accept it; ``reason`` is the short form shown once per example in reports."""
    link = _escaping_link(root, value)
    via = f" through the symlink {link}" if link else ""
    error = OutsideRootError(
        f"{what} path {str(value)!r} resolves to {str(resolved)!r}{via}, outside the dataset root {str(root)!r}; "
        f"fix the path, or, if the data is meant to point there, set {ALLOW_HINT}"
    )
    fix = "set allow_outside_root: true in the data config to follow it"
    if not link:
        fix = "fix the path, or set allow_outside_root: true in the data config to accept it"
    error.reason = f"outside the dataset root{via}; {fix}"
    error.resolved = resolved
    return error


def resolve_path(value: str | Path, root: Path, *, allow_outside_root: bool = False, what: str = "file") -> Path:
    """Absolute path of ``value`` (relative to ``root`` unless absolute), with symlinks resolved.

    A symlink inside the root that leads out of it (an image folder linked from another disk) is refused like a
    ``..`` path, since a dataset folder may come from elsewhere; the error names the link and the setting that
    accepts it.

    Args:
        value: the path as written in the data.
        root: dataset root.
        allow_outside_root: accept paths that resolve outside ``root``.
        what: what the path is, for the error message (``"image"``, ``"text file"``).

    Raises:
        OutsideRootError: the path resolves outside ``root`` and ``allow_outside_root`` is false.
    """
    root = root.resolve()
    resolved = (root / value).resolve()
    if not allow_outside_root and not resolved.is_relative_to(root):
        raise _outside(what, value, resolved, root)
    return resolved


def _escaping_link(root: Path, value: str | Path) -> str | None:
    """``'img' -> '/mnt/big/img'``: the first symlink on the way from ``root`` to ``value``, when ``value`` itself
    stays inside ``root`` as written (no ``..`` out of it, not absolute elsewhere); ``None`` otherwise."""
    lexical = Path(os.path.normpath(root / value))
    if not lexical.is_relative_to(root):
        return None
    node = root
    for part in lexical.relative_to(root).parts:
        node = node / part
        if node.is_symlink():
            return f"{str(node.relative_to(root))!r} -> {os.readlink(node)!r}"
    return None
