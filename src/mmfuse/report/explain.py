"""Explanation panels: the numbers of :mod:`mmfuse.model.explain` drawn for a person, one PNG per example, an
``index.html`` that shows them with the text's words shaded by their contribution, and ``explanations.json``.

Each panel shows, on the original image at its aspect ratio (the grid drawn over the part the image encoder
reads: the whole image, or its centre crop), upsampled smoothly (bilinear):

- the **occlusion map**: each region's contribution to the predicted class (red: blanking it lowers the
  probability, so it supports the prediction; blue: it speaks against it), on a scale symmetric around 0;
- for heads with attention (``cross_attention``), **the attention** beside it (mean over the text's tokens), so a
  person sees where the two disagree: attention is where the head looked, occlusion what its decision rests on;
  and a **word × region** row: where each of the most contributing words looked;
- the **words' contributions** as bars, and the **modalities'** (the prediction without the text, without the image).

What :func:`write_explanations` writes is what ``mmfuse explain`` writes; :func:`explanation_figure` and
:func:`words_markup` draw one example, for pages that show explanations among other things (the report gallery:
:func:`draw_panels` with ``compact=True``, the word bars left to :func:`words_markup`).

An example whose image cannot be drawn (none, missing, unreadable) gets a grey stand-in that says why, and
:func:`missing_pictures_note` counts and names them for the page.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from mmfuse.report import html as H
from mmfuse.report import plots

if TYPE_CHECKING:
    from mmfuse.model.explain import Explanation

__all__ = [
    "MAX_WORD_MAPS",
    "SCALE_FLOOR",
    "Panel",
    "computed_note",
    "draw_panels",
    "encoder_crop",
    "explanation_figure",
    "load_picture",
    "missing_pictures_note",
    "modalities_text",
    "words_markup",
    "write_explanations",
]

MAX_WORD_MAPS = 6
"""Word × region maps drawn per example (the words of largest contribution); the JSON holds every word's."""

MAX_WORD_BARS = 40
"""Word bars drawn per example (the words of largest absolute contribution); the JSON holds every word's."""

_ALPHA = 0.55

SCALE_FLOOR = 0.01
"""Contributions are coloured on a scale that saturates at the largest one, or at this (one point of probability)
when all are smaller, so that changes of no consequence stay faint."""


def _num(value: float) -> str:
    """A contribution for people: 3 decimals, or 2 significant digits when smaller than that shows."""
    return f"{value:+.3f}" if value == 0 or abs(value) >= 5e-4 else f"{value:+.1e}"


def encoder_crop(model: Any) -> float | None:
    """How ``model``'s image encoder frames an image, the ``crop`` of the functions here: ``None`` the whole image,
    else its centre square as a share of the short side (:func:`mmfuse.model.prediction.image_crop`)."""
    from mmfuse.model.prediction import image_crop

    return image_crop(getattr(getattr(model, "image_encoder", None), "preprocess", None))


def load_picture(explanation: Explanation) -> tuple[np.ndarray | None, str | None]:
    """``(picture, None)``: the example's image as ``(H, W, 3)`` uint8; or ``(None, why)`` when it cannot be drawn:
    the row has none, it was missing or unreadable when explained, or it cannot be read now."""
    from mmfuse.data.images import ImageError, open_image

    if explanation.image is None:
        return None, "the example has no image"
    if not explanation.image_present:
        told = next((n for n in explanation.notes if n.startswith("image not used")), None)
        return None, told or f"its image {explanation.image!r} could not be read when explained"
    try:
        return np.asarray(open_image(explanation.image)), None
    except ImageError as e:
        return None, f"its image cannot be read now: {e}"


def _box(shape: tuple[int, ...], crop: float | None) -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` in image pixels of the part the image encoder reads (an ``imshow`` extent)."""
    h, w = shape[0], shape[1]
    if crop is None:
        return 0.0, float(w), float(h), 0.0
    side = min(w, h) * crop
    left, top = (w - side) / 2, (h - side) / 2
    return left, left + side, top + side, top


def _overlay(ax: Any, picture: np.ndarray | None, heat: np.ndarray | None, crop: float | None, *, signed: bool,
             title: str, missing: str | None = None) -> Any:  # fmt: skip
    """``picture`` at its aspect ratio with ``heat`` (a grid) upsampled bilinearly over the encoder's part of it;
    without a picture, a grey square that says why (``missing``)."""
    stand_in = picture is None
    if picture is None:
        picture = np.full((240, 240, 3), 205, dtype=np.uint8)
    ax.imshow(picture, interpolation="lanczos")
    if stand_in and missing:
        ax.text(120, 120, textwrap.fill(f"image not shown: {missing}", 30), ha="center", va="center", fontsize=9,
                color="#1f2933", wrap=True)  # fmt: skip
    mappable = None
    if heat is not None and heat.size:
        heat = np.asarray(heat, dtype=float)
        if signed:
            m = max(float(np.abs(heat).max()), SCALE_FLOOR)
            kw = {"cmap": "RdBu_r", "vmin": -m, "vmax": m}
        else:
            kw = {"cmap": "inferno", "vmin": 0.0, "vmax": max(float(heat.max()), 1e-9)}
        mappable = ax.imshow(heat, extent=_box(picture.shape, crop), interpolation="bilinear", alpha=_ALPHA, **kw)
        ax.set_xlim(0, picture.shape[1])
        ax.set_ylim(picture.shape[0], 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10, wrap=True)
    return mappable


def _word_bars(ax: Any, explanation: Explanation) -> str:
    """Horizontal bars: the modalities on top, then the words in text order; returns a note on words left out."""
    words = list(explanation.words)
    contrib = np.asarray(explanation.word_contributions, dtype=float)
    keep = list(range(len(words)))
    note = ""
    if len(words) > MAX_WORD_BARS:
        keep = sorted(np.argsort(-np.abs(contrib), kind="stable")[:MAX_WORD_BARS].tolist())
        note = f"{MAX_WORD_BARS} of {len(words)} words shown (largest |contribution|)"
    labels = ["[without the text]", "[without the image]"] + [
        words[i] if explanation.words_read[i] else f"{words[i]} (not read)" for i in keep
    ]
    values = [explanation.text_contribution, explanation.image_contribution, *contrib[keep]]
    colours = ["#8064a2", "#8064a2"] + ["#c0504d" if v > 0 else "#3b6fb6" for v in contrib[keep]]
    y = np.arange(len(values))
    ax.barh(y, values, color=colours)
    ax.set_yticks(y, [lab if len(lab) <= 28 else lab[:27] + "…" for lab in labels], fontsize=9)
    for label in ax.get_yticklabels():
        label.set_parse_math(False)
    ax.invert_yaxis()
    ax.axvline(0, color="#616e7c", linewidth=0.8)
    low, high = ax.get_xlim()
    ax.set_xlim(min(low, -SCALE_FLOOR), max(high, SCALE_FLOOR))  # changes of no consequence look small
    ax.set_xlabel(f"contribution to P({explanation.label})", fontsize=9)
    ax.set_title("What each piece adds: P(label) minus P(label) without it", fontsize=10)
    ax.tick_params(axis="x", labelsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", alpha=0.25, linewidth=0.6)
    return note


def explanation_figure(
    explanation: Explanation,
    picture: np.ndarray | None,
    crop: float | None = None,
    *,
    missing: str | None = None,
    compact: bool = False,
) -> Figure:
    """One example's panel (see the module docstring).

    Args:
        explanation: what :func:`~mmfuse.model.explain.explain_examples` gave for the example.
        picture: its original image, ``(H, W, 3)`` uint8 (``None``: a grey stand-in).
        crop: the image encoder's centre crop as a share of the short side (``None``: it reads the whole image).
        missing: why there is no ``picture`` (:func:`load_picture`), written on the stand-in.
        compact: without the word bars (a page that shows the words' contributions as text, e.g. the report
            gallery with :func:`words_markup`).
    """
    has_attention = explanation.attention is not None
    word_maps = _word_map_order(explanation) if explanation.word_attention is not None else []
    n_words = min(len(explanation.words), MAX_WORD_BARS)
    bars_height = 1.2 + 0.22 * (n_words + 2)
    top_height = 3.4
    rows = [top_height] + ([] if compact else [bars_height]) + ([2.4] if word_maps else [])
    fig = plots.new_figure(10.5, sum(rows) + 0.6)
    grid = fig.add_gridspec(len(rows), 1, height_ratios=rows)
    top = grid[0].subgridspec(1, 3 if has_attention else 2)
    ax = fig.add_subplot(top[0])
    _overlay(ax, picture, None, crop, signed=True, title="image" if explanation.image_present else "no image (blank)",
             missing=missing)  # fmt: skip
    ax = fig.add_subplot(top[1])
    regions = explanation.region_contributions
    m = _overlay(ax, picture, regions, crop, signed=True,
                 title=f"occlusion: blanking each of {regions.shape[0]}×{regions.shape[1]} regions",
                 missing=missing)  # fmt: skip
    if m is not None:
        bar = fig.colorbar(m, ax=ax, shrink=0.8)
        bar.ax.tick_params(labelsize=9)
        bar.set_label("red supports, blue opposes", fontsize=9)
    if has_attention:
        ax = fig.add_subplot(top[2])
        att = explanation.attention
        assert att is not None
        m = _overlay(ax, picture, att, crop, signed=False, title="attention (mean over the text's tokens)",
                     missing=missing)  # fmt: skip
        if m is not None:
            bar = fig.colorbar(m, ax=ax, shrink=0.8)
            bar.ax.tick_params(labelsize=9)
    note = "" if compact else _word_bars(fig.add_subplot(grid[1]), explanation)
    if word_maps:
        assert explanation.word_attention is not None
        sub = grid[len(rows) - 1].subgridspec(1, MAX_WORD_MAPS)
        for k, i in enumerate(word_maps):
            title = f"{explanation.words[i][:16]} ({_num(explanation.word_contributions[i])})"
            _overlay(fig.add_subplot(sub[k]), picture, explanation.word_attention[i], crop, signed=False, title=title,
                     missing=missing)  # fmt: skip
    truth = f" · true {explanation.true_label}" if explanation.true_label is not None else ""
    head = f"{explanation.id}: predicted {explanation.label} (P = {explanation.probability:.3f}){truth}"
    fig.suptitle(head + (f"\n{note}" if note else ""), fontsize=11)
    return fig


def _word_map_order(explanation: Explanation) -> list[int]:
    """The read words of largest absolute contribution, at most :data:`MAX_WORD_MAPS`, in text order."""
    read = [i for i in range(len(explanation.words)) if explanation.words_read[i]]
    contrib = np.abs(np.asarray(explanation.word_contributions, dtype=float))
    chosen = sorted(read, key=lambda i: (-contrib[i], i))[:MAX_WORD_MAPS]
    return sorted(chosen)


def words_markup(explanation: Explanation) -> str:
    """The text as HTML, each word shaded by its contribution (red supports the label, blue opposes it; the
    number in its tooltip), words the model never read struck through."""
    contrib = np.asarray(explanation.word_contributions, dtype=float)
    scale = max(float(np.abs(contrib).max()) if contrib.size else 0.0, SCALE_FLOOR)
    spans = []
    for word, value, read in zip(explanation.words, contrib, explanation.words_read, strict=True):
        strength = min(abs(value) / scale, 1.0) * 0.6
        colour = f"rgba(192,80,77,{strength:.2f})" if value > 0 else f"rgba(59,111,182,{strength:.2f})"
        style = f"background:{colour};padding:1px 2px;border-radius:3px" + (
            "" if read else ";text-decoration:line-through"
        )
        tip = _num(value) + ("" if read else " (not read: past the text encoder's max_length)")
        spans.append(f'<span style="{style}" title="{H.esc(tip)}">{H.esc(word)}</span>')
    return " ".join(spans) if spans else "<i>(empty text)</i>"


def modalities_text(explanation: Explanation) -> str:
    """The modality contributions in words: how P(label) changes without the text, without the image."""
    return (
        f"P({explanation.label}) changes by {_num(-explanation.text_contribution)} without the text, "
        f"by {_num(-explanation.image_contribution)} without the image"
    )


@dataclass
class Panel:
    """One example's drawn panel: its explanation, the PNG, and why its image is not in it (``None``: it is)."""

    explanation: Explanation
    png: Path
    missing: str | None = None


def draw_panels(
    explanations: Sequence[Explanation],
    folder: Path,
    crop: float | None = None,
    *,
    compact: bool = False,
    names: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Panel]:
    """Draws each explanation's :func:`explanation_figure` into ``folder`` (file ``names``, default numbered by
    id), each on its original image (:func:`load_picture`; a stand-in that says why where it cannot be read)."""
    panels = []
    for n, explanation in enumerate(explanations, 1):
        picture, missing = load_picture(explanation)
        name = names[n - 1] if names is not None else _safe_name(n, explanation.id)
        figure = explanation_figure(explanation, picture, crop, missing=missing, compact=compact)
        png = plots.save(figure, Path(folder) / name)
        if log is not None:
            log(f"wrote {png}")
        panels.append(Panel(explanation, png, missing))
    return panels


def missing_pictures_note(panels: Sequence[Panel]) -> str | None:
    """``None`` when every panel has its image, else a line that counts and names the ones drawn without it."""
    without = [p for p in panels if p.missing is not None]
    if not without:
        return None
    shown = "; ".join(f"{p.explanation.id!r}: {p.missing}" for p in without[:10])
    more = f"; and {len(without) - 10} more" if len(without) > 10 else ""
    return f"{len(without)} of {len(panels)} examples drawn without their image (a grey stand-in): {shown}{more}"


def computed_note(explanations: Sequence[Explanation]) -> str:
    """What the explanations cost: how many examples, which occlusions, the forward passes in all."""
    grids = sorted({f"{e.grid[0]}×{e.grid[1]}" for e in explanations})
    passes = sum(e.forward_passes for e in explanations)
    return (
        f"Explanations computed for these {len(explanations)} examples only: each word dropped in turn, each of the "
        f"{' / '.join(grids) or '-'} image regions blanked in turn, the text emptied and the image removed; "
        f"{passes} forward passes of the model in all. `mmfuse explain RUN DATA --ids ...` explains other examples."
    )


def _safe_name(index: int, example_id: str) -> str:
    return f"{index:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', example_id)[:60]}.png"


def _example_section(n: int, explanation: Explanation, png: Path) -> tuple[str, str, str]:
    anchor = f"ex-{n}"
    top = sorted(
        zip(explanation.words, explanation.word_contributions, strict=True), key=lambda wc: -abs(float(wc[1]))
    )[:5]
    rows = [
        ["predicted", f"{explanation.label} (P = {explanation.probability:.3f})"],
        ["true label", explanation.true_label if explanation.true_label is not None else "(none)"],
        ["without the text", f"P changes by {_num(-explanation.text_contribution)}"],
        ["without the image", f"P changes by {_num(-explanation.image_contribution)}"],
        ["strongest words", ", ".join(f"{w} {_num(c)}" for w, c in top) or "(none)"],
    ]
    notes = "".join(f"<li>{H.esc(n)}</li>" for n in explanation.notes)
    body = (
        f'<p style="font-size:16px;line-height:1.9">{words_markup(explanation)}</p>'
        + H.table(["", "value"], rows, numeric=[False, False])
        + (f'<div class="warn"><ul>{notes}</ul></div>' if notes else "")
        + H.figure(png, alt=f"explanation of example {explanation.id}")
    )
    title = f"Example {explanation.id}"
    return anchor, title, H.section(anchor, title, body)


_LEAD = (
    "A contribution is the predicted class's probability minus its probability without the piece: a word dropped "
    "from the text, a region of the model's input image set to the blank that stands in for a missing image, the "
    "whole text (empty) or the whole image (the missing-image path). Red supports the prediction, blue opposes it. "
    f"Colours saturate at the largest change, or at {SCALE_FLOOR:g} when all are smaller. Attention "
    "(cross_attention heads) shows where the head looked; where it differs from the occlusion map, attention is not "
    "the explanation."
)


def write_explanations(
    explanations: Sequence[Explanation],
    out: str | Path,
    *,
    crop: float | None = None,
    title: str = "Explanations",
    subtitle: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Writes one PNG panel per explanation, ``explanations.json`` (the numbers, with ``meta``) and ``index.html``
    (self-contained: the panels embedded) into ``out``; returns the HTML file.

    Args:
        explanations: what :func:`~mmfuse.model.explain.explain_examples` returned.
        out: the folder (created).
        crop: the image encoder's centre crop as a share of the short side (``None``: the whole image is read).
        title: the page's title.
        subtitle: the page's header lines.
        meta: more facts for the JSON (run, data).
        log: called with a line per file written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    panels = draw_panels(explanations, out, crop, log=log)
    sections = [_example_section(n, p.explanation, p.png) for n, p in enumerate(panels, 1)]
    missing = missing_pictures_note(panels)
    if missing is not None and log is not None:
        log(f"warning: {missing}")
    payload = {
        **(meta or {}),
        "images_not_drawn": [{"id": p.explanation.id, "reason": p.missing} for p in panels if p.missing is not None],
        "contribution": "P(label | example) - P(label | example without the piece); positive supports the label",
        "occlusion": {
            "words": "each word dropped from the text (split at whitespace)",
            "regions": "each cell of the model's input image set to the blank (zeros) of a missing image",
            "text": "the empty text",
            "image": "the missing-image path: a blank, image_present false",
        },
        "examples": [e.to_dict() for e in explanations],
    }
    path = out / "explanations.json"
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    warn = f'<div class="warn">{H.esc(missing)}</div>' if missing is not None else ""
    intro = ("how", "How to read this",
             H.section("how", "How to read this", f'<p class="lead">{H.esc(_LEAD)}</p>{warn}'))  # fmt: skip
    from mmfuse import __version__

    page = out / "index.html"
    page.write_text(H.page(title, subtitle, [intro, *sections], f"mmfuse {__version__} explanations"), encoding="utf-8")
    return page
