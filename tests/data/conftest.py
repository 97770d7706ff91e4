"""Fixtures for the data-layer tests: tiny datasets written on the fly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


def _write_image(path: Path, *, color: tuple[int, int, int] = (200, 30, 30), size: int = 16, fmt: str = "PNG") -> Path:
    """A small solid-colour image, saved in ``fmt`` whatever the extension of ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format=fmt)
    return path


def _write_jsonl(path: Path, rows: list[Any], *, raw_lines: dict[int, str] | None = None) -> Path:
    """``rows`` as JSON lines; ``raw_lines`` puts verbatim text at given 0-based line positions (broken lines)."""
    lines = [json.dumps(r) for r in rows]
    for index, text in sorted((raw_lines or {}).items()):
        lines.insert(index, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Builds a JSONL dataset with ``n`` examples per label under ``tmp_path/ds`` and returns the root.

    Images are red for label "a" and blue for label "b"; ids are ``"{label}{i}"``.
    """

    def build(n: int = 6, labels: tuple[str, ...] = ("a", "b"), file: str = "train.jsonl") -> Path:
        root = tmp_path / "ds"
        rows = []
        for label in labels:
            color = (220, 20, 20) if label == labels[0] else (20, 20, 220)
            for i in range(n):
                _write_image(root / "img" / f"{label}{i}.png", color=color)
                rows.append(
                    {"id": f"{label}{i}", "text": f"text {label} {i}", "img": f"img/{label}{i}.png", "label": label}
                )
        _write_jsonl(root / file, rows)
        return root

    return build


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """Writes a small solid-colour image (see ``_write_image``)."""
    return _write_image


@pytest.fixture
def write_jsonl() -> Callable[..., Path]:
    """Writes JSON lines, optionally with broken lines (see ``_write_jsonl``)."""
    return _write_jsonl
