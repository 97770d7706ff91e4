"""Where the persistent feature cache lives, and how to turn it off.

Precedence: an explicit folder (config ``cache.dir``, CLI ``--cache-dir``) over the ``MMFUSE_CACHE_DIR`` environment
variable over the default, ``$XDG_CACHE_HOME/mmfuse`` (``~/.cache/mmfuse`` when that is unset). Any of them set to
``off`` (or ``none``, ``false``, ``0``, ``no``) turns the persistent cache off: features then live in this process
only.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "MMFUSE_CACHE_DIR"
"""Environment variable naming the cache folder (or ``off``)."""

OFF_VALUES = frozenset({"off", "none", "false", "0", "no", "disabled"})
"""Values of ``cache.dir`` / ``MMFUSE_CACHE_DIR`` / ``--cache-dir`` that turn the persistent cache off."""

FEATURES_SUBDIR = "features"
"""Folder under the cache root holding one folder per encoder identity."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mmfuse``, or ``~/.cache/mmfuse`` (XDG base-directory spec: a relative value is ignored)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "mmfuse"


def is_off(value: str | os.PathLike[str] | None) -> bool:
    """True when ``value`` is one of :data:`OFF_VALUES` (case-insensitive)."""
    return value is not None and str(value).strip().lower() in OFF_VALUES


def resolve_cache_dir(configured: str | os.PathLike[str] | None = None) -> Path | None:
    """The cache root to use, or ``None`` when the persistent cache is off.

    Args:
        configured: the folder given explicitly (config ``cache.dir`` or ``--cache-dir``); ``None`` falls back to
            ``MMFUSE_CACHE_DIR``, then to :func:`default_cache_dir`.

    Raises:
        ValueError: the folder named exists but is a file.
    """
    if configured is None:
        env = os.environ.get(CACHE_DIR_ENV, "").strip()
        configured = env or None
        where = f"${CACHE_DIR_ENV}"
    else:
        where = "the cache folder"
    if configured is None:
        return default_cache_dir()
    if is_off(configured):
        return None
    path = Path(configured).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{where} {str(path)!r} is a file, not a folder; name a folder for the feature cache, or 'off' to "
            "keep features in this process only"
        )
    return path


def features_dir(root: Path) -> Path:
    """``root/features``: one sub-folder per encoder identity."""
    return root / FEATURES_SUBDIR


def onnx_dir(root: Path) -> Path:
    """Where ONNX exports of frozen encoders are kept (``backend: onnxruntime``), one file per encoder identity."""
    return Path(root) / "onnx"
