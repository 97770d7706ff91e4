"""A PNG grid of examples as the model will read them: the image as on disk (RGB, not normalized), text, label."""

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

_WRAP = 36  # characters per caption line
_LINES = 6  # caption lines shown before "..."


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
    """Draws up to ``n`` examples in a grid and saves it as PNG.

    Args:
        examples: examples to draw from.
        out: the PNG file to write (folders are created).
        n: how many examples.
        columns: grid columns.
        seed: draw a seeded random sample; ``None`` takes the first ``n`` in order.
        title: figure title.
        max_pixels: pixel cap for opening images.

    Raises:
        ValueError: no examples, or ``n`` / ``columns`` below 1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be at least 1, got n={n}, columns={columns}")
    if not examples:
        raise ValueError("no examples to preview; check the split with `mmfuse data check`")
    chosen = list(examples[:n]) if seed is None else random.Random(seed).sample(list(examples), min(n, len(examples)))
    columns = min(columns, len(chosen))
    rows = -(-len(chosen) // columns)
    fig = Figure(figsize=(3.0 * columns, 3.9 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, parse_math=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # glyphs missing from the default font (emoji, CJK)
        for i, example in enumerate(chosen):
            ax = fig.add_subplot(rows, columns, i + 1)
            _draw_example(ax, example, max_pixels)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=90)
    return out


def _draw_example(ax: Axes, example: Example, max_pixels: int) -> None:
    ax.set_axis_off()
    label = "unlabeled" if example.label is None else example.label
    ax.set_title(f"{example.id}  [{label}]", fontsize=8, parse_math=False)
    message = None
    if example.image is None:
        message = "no image"
    else:
        try:
            ax.imshow(np.asarray(open_image(example.image, max_pixels=max_pixels)))
        except ImageError as e:
            message = f"unreadable image:\n{textwrap.fill(e.reason, 30)}"
    if message is not None:
        ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=8, color="crimson", parse_math=False)
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
        fontsize=7,
        parse_math=False,
    )
