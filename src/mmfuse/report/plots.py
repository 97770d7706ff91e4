"""The report's figures: matplotlib (Agg, no pyplot state), one function per figure, each saved as an SVG whose
labels stay text (:func:`save_svg`; :func:`save` writes a PNG).

Every function takes plain arrays and records (no model, no files), so each figure can be tested on its own.

Sizes are chosen for a 1280-pixel wide window at 100% zoom: an SVG figure shows at 96 CSS pixels per inch of its
figure size, so a label of ``p`` points reads at ``p * 4/3`` pixels. No label is smaller than :data:`SMALL` points
(12 px), and no chart is wider than the report's content (:data:`MAX_WIDTH` inches), so none is shrunk there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from mmfuse.model.prediction import grid_shape

PALETTE = ["#3b6fb6", "#e07b39", "#4c9f70", "#c0504d", "#8064a2", "#4bacc6", "#9b8e3d", "#d16fa8"]
DPI = 110
SMALL = 9
"""Points of the smallest label of a chart (legends, annotations): 12 CSS pixels in the report."""
MAX_WIDTH = 11.5
"""Inches of the widest chart: the report's content is 1130 CSS pixels wide (11.8 inches at 96 per inch)."""


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Writes ``fig`` as PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # glyphs missing from the default font (emoji, CJK)
        fig.savefig(path, format="png", dpi=DPI)
    return path


def save_svg(fig: Figure, path: Path) -> Path:
    """Writes ``fig`` as SVG (folders created) with its text as ``<text>`` elements the browser lays out (escaped by
    matplotlib); pictures inside it (``imshow``) are embedded at :data:`DPI`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), rc_context({"svg.fonttype": "none"}):
        warnings.simplefilter("ignore", UserWarning)  # glyphs missing from the default font (emoji, CJK)
        fig.savefig(path, format="svg", dpi=DPI, metadata={"Date": None})
    return path


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25, linewidth=0.6)


def learning_curves(history: Sequence[Mapping[str, Any]], metric: str) -> Figure:
    """Loss (train and validation) and the validation metrics per epoch; the best epoch marked.

    Args:
        history: epoch records (``epoch``, ``train_loss``, ``val`` metrics, ``best``), as in ``metrics.jsonl``.
        metric: the selection metric (drawn first and thickest).
    """
    epochs = [int(r["epoch"]) for r in history]
    fig = new_figure(10, 3.6)
    ax_loss, ax_metric = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r.get("train_loss") for r in history], "o-", color=PALETTE[0], label="train loss", ms=3)
    ax_loss.plot(epochs, [_val(r, "loss") for r in history], "o-", color=PALETTE[1], label="val loss", ms=3)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    names = list(dict.fromkeys([metric, "accuracy", "macro_f1"]))
    if metric == "loss":
        names = ["accuracy", "macro_f1"]
    for i, name in enumerate(names):
        values = [_val(r, name) for r in history]
        if all(v is None for v in values):
            continue
        ax_metric.plot(epochs, values, "o-", color=PALETTE[(i + 2) % len(PALETTE)], ms=3,
                       lw=2.4 if name == metric else 1.3, label=f"val {name}")  # fmt: skip
    ax_metric.set(title=f"Validation metrics (selection: {metric})", xlabel="epoch")
    best = [int(r["epoch"]) for r in history if r.get("best")]
    for ax in (ax_loss, ax_metric):
        if best:
            ax.axvline(best[-1], color="#888", ls="--", lw=1, label=f"best epoch {best[-1]}")
        _style(ax)
        ax.legend(fontsize=SMALL, frameon=False)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
    return fig


def _val(record: Mapping[str, Any], name: str) -> float | None:
    value = (record.get("val") or {}).get(name)
    return None if value is None else float(value)


def roc_curve_plot(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], threshold: float | None = None) -> Figure:
    """Binary ROC curve of class 1 with its AUC; the tuned threshold's operating point marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = new_figure(5, 4.4)
    ax = fig.subplots()
    positive = classes[1]
    if len(np.unique(y)) < 2:
        ax.text(0.5, 0.5, "ROC undefined: only one class present", ha="center", va="center")
    else:
        fpr, tpr, thresholds = roc_curve(y == 1, proba[:, 1])
        auc = roc_auc_score(y == 1, proba[:, 1])
        ax.plot(fpr, tpr, color=PALETTE[0], lw=2, label=f"model (AUC {auc:.3f})")
        for t, marker, name in ((0.5, "o", "threshold 0.5"), (threshold, "s", "tuned threshold")):
            if t is None:
                continue
            i = int(np.argmin(np.abs(thresholds - t)))
            ax.plot(fpr[i], tpr[i], marker, color=PALETTE[1] if marker == "o" else PALETTE[3], ms=7,
                    label=f"{name} ({t:.2f})")  # fmt: skip
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="chance")
    ax.set(title=f"ROC, positive class {positive!r}", xlabel="false positive rate", ylabel="true positive rate",
           xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    ax.title.set_parse_math(False)
    ax.legend(fontsize=SMALL, frameon=False, loc="lower right")
    _style(ax)
    return fig


def pr_curves(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> Figure:
    """Precision-recall curve of each class (one-vs-rest), with its average precision."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = new_figure(5.6, 4.4)
    ax = fig.subplots()
    for c, name in enumerate(classes):
        target = y == c
        if not target.any():
            continue
        precision, recall, _ = precision_recall_curve(target, proba[:, c])
        ap = average_precision_score(target, proba[:, c])
        ax.plot(recall, precision, color=PALETTE[c % len(PALETTE)], lw=2, label=f"{name} (AP {ap:.3f})")
        ax.axhline(target.mean(), color=PALETTE[c % len(PALETTE)], ls=":", lw=1)
    ax.set(title="Precision-recall per class (dotted: class frequency)", xlabel="recall", ylabel="precision",
           xlim=(0, 1), ylim=(0, 1.02))  # fmt: skip
    legend = ax.legend(fontsize=SMALL, frameon=False, loc="lower left")
    for text in legend.get_texts():
        text.set_parse_math(False)
    _style(ax)
    return fig


def confusion_plot(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Confusion matrix: counts, coloured by the share of each true class (rows)."""
    cm = np.asarray(cm, dtype=float)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(max(3.8, 1.0 + 0.75 * len(classes)), MAX_WIDTH - 0.8)
    fig = new_figure(size + 0.8, size)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=10,
                    color="white" if share[i, j] > 0.55 else "#222")  # fmt: skip
    ticks = range(len(classes))
    ax.set_xticks(
        ticks,
        [str(c) for c in classes],
        rotation=30 if len(classes) > 3 else 0,
        ha="right" if len(classes) > 3 else "center",
    )
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    return fig


def calibration_plot(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], bins: int = 10,
                     title: str = "Calibration") -> tuple[Figure, float]:  # fmt: skip
    """Reliability diagram and confidence histogram; returns the figure and the expected calibration error.

    Binary tasks plot P(class 1) against the observed frequency of class 1; others plot the confidence (the top
    probability) against accuracy. ECE (:func:`~mmfuse.engine.metrics.expected_calibration_error`): the mean gap
    between top-label confidence and accuracy, weighted by bin size. ``title`` heads the diagram, with the ECE.
    """
    from mmfuse.engine.metrics import expected_calibration_error

    binary = proba.shape[1] == 2
    if binary:
        score, hit, what = proba[:, 1], (y == 1).astype(float), f"P({classes[1]})"
    else:
        score, hit, what = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(float), "confidence (top probability)"
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    centers, observed, counts = [], [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centers.append(score[mask].mean())
            observed.append(hit[mask].mean())
            counts.append(int(mask.sum()))
    ece = expected_calibration_error(y, proba, bins)
    fig = new_figure(5, 5)
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="perfectly calibrated")
    ax.plot(centers, observed, "o-", color=PALETTE[0], lw=2, ms=5, label="model")
    for x, o, n in zip(centers, observed, counts, strict=True):
        ax.annotate(
            str(n), (x, o), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=SMALL, color="#666"
        )
    ax.set(ylabel=f"observed {'frequency of ' + classes[1] if binary else 'accuracy'}", xlim=(0, 1), ylim=(0, 1.05),
           title=f"{title} (ECE {ece:.3f})")  # fmt: skip
    ax.yaxis.label.set_parse_math(False)
    ax.legend(fontsize=SMALL, frameon=False, loc="upper left")
    hist.hist(score, bins=edges, color=PALETTE[0], alpha=0.7)
    hist.set(xlabel=what, ylabel="examples")
    hist.xaxis.label.set_parse_math(False)
    for a in (ax, hist):
        _style(a)
    return fig, ece


def trials_chart(numbers: Sequence[int], values: Sequence[float | None], states: Sequence[str], metric: str,
                 higher_is_better: bool, baselines: Mapping[str, float] | None = None) -> Figure:  # fmt: skip
    """Each trial's validation metric by trial number (complete and pruned), with the best so far and, dotted, the
    unimodal baselines' values (``baselines``: head name -> value)."""
    fig = new_figure(9, 3.8)
    ax = fig.subplots()
    colors = {"complete": PALETTE[0], "pruned": PALETTE[1]}
    for state, color in colors.items():
        xs = [n for n, v, s in zip(numbers, values, states, strict=True) if s == state and v is not None]
        ys = [v for v, s in zip(values, states, strict=True) if s == state and v is not None]
        if xs:
            ax.scatter(xs, ys, color=color, s=36, label=state, zorder=3, alpha=0.9)
    done = sorted((n, v) for n, v, s in zip(numbers, values, states, strict=True) if s == "complete" and v is not None)
    if done:
        best, line = None, []
        for _, v in done:
            best = v if best is None or (v > best if higher_is_better else v < best) else best
            line.append(best)
        ax.step([n for n, _ in done], line, where="post", color=PALETTE[2], lw=2, label="best so far")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, color=PALETTE[(i + 3) % len(PALETTE)], ls=":", lw=1.6, label=f"{name} baseline")
    ax.set(title=f"Trials: validation {metric}", xlabel="trial", ylabel=f"val {metric}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers
    ax.legend(fontsize=SMALL, frameon=True, framealpha=0.85, loc="best")
    _style(ax)
    return fig


def importance_plot(importances: Mapping[str, float], trials: int | None = None) -> Figure:
    """Parameter importances (fANOVA, Optuna), largest on top; ``trials``: how many complete trials they come from
    (in the title)."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = new_figure(7, 1.1 + 0.45 * max(len(items), 1))
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color=PALETTE[0])
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=SMALL)
    counted = f", {trials} complete trials" if trials is not None else ""
    ax.set(title=f"Hyperparameter importance (fANOVA{counted})", xlabel="share of the validation metric's variance")
    for label in ax.get_yticklabels():
        label.set_parse_math(False)
    _style(ax)
    return fig


CARD_SIDE = 320
"""Pixels of the longer side of a gallery image."""


def attention_card(image: np.ndarray | None, attention: np.ndarray | None, crop: float | None = None) -> Image.Image:
    """An example's image (longer side :data:`CARD_SIDE`) with its attention over image regions as a heatmap on top.

    Drawn with PIL, not matplotlib: a gallery has a dozen of these, and figure layout would dominate the report's time.

    Args:
        image: ``(H, W, 3)`` uint8, or ``None`` (a grey placeholder).
        attention: ``(h, w)`` attention over the region grid (a :class:`~mmfuse.model.prediction.Prediction`'s),
            or ``(N,)`` over N regions in row-major order, laid out by :func:`~mmfuse.model.prediction.grid_shape`
            (a guess: pass the ``(h, w)`` grid where there is one);
            ``None``, or a single row of regions (N prime: not a grid), draws the image alone. Drawn where the
            encoder looked: the whole image, or the centre square when it crops.
        crop: the encoder's centre crop as a share of the short side (``None``: it resizes the whole image).
    """
    from matplotlib import colormaps
    from PIL import Image as PILImage

    picture = (
        PILImage.new("RGB", (CARD_SIDE, CARD_SIDE), (205, 210, 218)) if image is None else PILImage.fromarray(image)
    )
    w, h = picture.size
    scale = CARD_SIDE / max(w, h)
    picture = picture.convert("RGB").resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), PILImage.Resampling.LANCZOS
    )
    if attention is None:
        return picture
    heat = np.asarray(attention, dtype=float)
    if heat.ndim == 1:
        heat = heat.reshape(grid_shape(heat.size))
    if heat.shape[0] == 1 and heat.size > 1:
        return picture
    heat = (heat - heat.min()) / max(float(np.ptp(heat)), 1e-12)
    w, h = picture.size
    if crop is None:
        box = (0, 0, w, h)
    else:
        side = round(min(w, h) * crop)
        left, top = (w - side) // 2, (h - side) // 2
        box = (left, top, left + side, top + side)
    size = (box[2] - box[0], box[3] - box[1])
    smooth = np.clip(
        np.asarray(PILImage.fromarray(heat.astype(np.float32), mode="F").resize(size, PILImage.Resampling.BILINEAR)),
        0,
        1,
    )
    colours = colormaps["inferno"](smooth)[..., :3] * 255
    alpha = (0.15 + 0.5 * smooth)[..., None]  # more opaque where the text looked, so the rest stays readable
    region = np.asarray(picture.crop(box), dtype=float)
    blended = (1 - alpha) * region + alpha * colours
    picture.paste(PILImage.fromarray(blended.round().astype(np.uint8)), box[:2])
    return picture


def save_image(image: Image.Image, path: Path) -> Path:
    """Writes a PIL image as PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    return path
