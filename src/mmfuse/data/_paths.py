"""Resolving dataset-relative paths, refusing those that escape the dataset root."""

from __future__ import annotations

from pathlib import Path


class OutsideRootError(ValueError):
    """A path from the data resolves outside the dataset root (``..``, an absolute path, or a symlink)."""


def resolve_path(value: str | Path, root: Path, *, allow_outside_root: bool = False, what: str = "file") -> Path:
    """Absolute path of ``value`` (relative to ``root`` unless absolute), with symlinks resolved.

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
        raise OutsideRootError(
            f"{what} path {str(value)!r} resolves to {str(resolved)!r}, outside the dataset root {str(root)!r}; "
            "fix the path, or set allow_outside_root: true if the data is meant to point there"
        )
    return resolved
