"""A grid of examples as the model will read them: the image as on disk (RGB, not normalized), text, label; a PNG,
or an SVG whose text the browser lays out (the report's data strip)."""

from __future__ import annotations

import random
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmfuse.data.example import Example
from mmfuse.data.images import DEFAULT_MAX_PIXELS, ImageError, open_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_FONT = 10  # points of every caption: 12.5 px in the 90-dpi PNG, 13 px in an SVG shown at 96 px per inch
_COLUMN = 2.8  # inches per column: 4 columns fit a 1280-px window at 100% zoom
_WRAP = 34  # characters per caption line: DejaVu Sans averages ~0.58 em a character, 34 * 5.8 pt < 2.8 inches
_LINES = 5  # caption lines shown before "..."
_THUMB = 2 * round(_COLUMN * 96)  # pixels of an image's longer side: twice what a column shows, not the whole file


def save_preview(
    examples: Sequence[Example],
    out: Path | str,
    *,
    n: int = 16,
    columns: int = 4,
    seed: int | None = None,
    title: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Path:
    """Draws up to ``n`` examples in a grid and saves it as PNG, or as SVG when ``out`` ends in ``.svg`` (captions kept
    as text, pictures embedded).

    Args:
        examples: examples to draw from.
        out: the PNG or SVG file to write (folders are created).
        n: how many examples.
        columns: grid columns.
        seed: draw a seeded random sample; ``None`` takes the first ``n`` in order.
        title: figure title.
        max_pixels: pixel cap for opening images.

    Raises:
        ValueError: no examples, or ``n`` / ``columns`` below 1.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be at least 1, got n={n}, columns={columns}")
    if not examples:
        raise ValueError("no examples to preview; check the split with `mmfuse data check`")
    chosen = list(examples[:n]) if seed is None else random.Random(seed).sample(list(examples), min(n, len(examples)))
    columns = min(columns, len(chosen))
    rows = -(-len(chosen) // columns)
    fig = Figure(figsize=(_COLUMN * columns, 3.7 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, parse_math=False, fontsize=_FONT + 2)
    out = Path(out)
    svg = out.suffix.lower() == ".svg"
    with warnings.catch_warnings(), rc_context({"svg.fonttype": "none"}):
        warnings.simplefilter("ignore", UserWarning)  # glyphs missing from the default font (emoji, CJK)
        for i, example in enumerate(chosen):
            ax = fig.add_subplot(rows, columns, i + 1)
            _draw_example(ax, example, max_pixels)
        out.parent.mkdir(parents=True, exist_ok=True)
        if svg:  # pictures at 110 dpi: sharp where a column shows them at 96 px per inch
            fig.savefig(out, format="svg", dpi=110, metadata={"Date": None})
        else:
            fig.savefig(out, format="png", dpi=90)
    return out


def _draw_example(ax: Axes, example: Example, max_pixels: int) -> None:
    ax.set_axis_off()
    label = "unlabeled" if example.label is None else example.label
    ax.set_title(f"{example.id}  [{label}]", fontsize=_FONT, parse_math=False)
    message = None
    if example.image is None:
        message = "no image"
    else:
        try:
            picture = open_image(example.image, max_pixels=max_pixels)
            picture.thumbnail((_THUMB, _THUMB))
            ax.imshow(np.asarray(picture))
        except ImageError as e:
            message = f"unreadable image:\n{textwrap.fill(e.reason, 30)}"
    if message is not None:
        ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=_FONT, color="crimson", parse_math=False)
    lines = textwrap.wrap(example.text, _WRAP) or ["(empty text)"]
    if len(lines) > _LINES:
        lines = [*lines[: _LINES - 1], lines[_LINES - 1][: _WRAP - 3] + "..."]
    ax.text(
        0.5,
        -0.03,
        "\n".join(lines),
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=_FONT,
        parse_math=False,
    )
