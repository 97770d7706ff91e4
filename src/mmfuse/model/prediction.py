"""What a prediction is, once for every backend: probabilities from logits, the label rule, the attention grid.

:class:`Prediction` is what :meth:`MultimodalClassifier.predict_details
<mmfuse.engine.classifier.MultimodalClassifier.predict_details>`, the HTTP server and the ONNX runtime return;
:func:`predict_labels` is the one decision rule (metrics, ensembles and the server use it too); :func:`attention_grid`
lays attention over image regions out on the grid the image encoder reported (:func:`grid_shape` guesses one only for
models that do not carry it: checkpoints and ONNX exports made before encoders reported their grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "MAX_VIEW_WORDS",
    "Prediction",
    "attention_grid",
    "grid_shape",
    "image_crop",
    "predict_labels",
    "probabilities",
]


@dataclass
class Prediction:
    """One item's prediction.

    Attributes:
        label: predicted class name.
        probabilities: class name -> probability (softmax of the logits), in class order.
        threshold: the decision threshold on P(second class) for binary tasks; ``None`` (argmax) otherwise.
        image_reliance: how much the image contributed, in ``[0, 1]``; ``None`` for heads without it.
        attention: ``(h, w)`` attention over the image's region grid (row-major, top-left first), averaged over the
            valid text tokens (or the one pooled query), summing to 1; ``None`` for heads without attention.
        id: the example id (predictions of examples; ``None`` for items of an HTTP request).
        image_present: ``False`` when the image was missing or unreadable and a blank stood in.
        token_attention: ``(Q, N)`` the attention of each valid text token (or the one pooled query) over the N
            image regions, before averaging into :attr:`attention` (``None`` for heads without attention).
        words: the text's words (split at whitespace) that :attr:`word_attention` covers: the first
            :data:`MAX_VIEW_WORDS` at most (``Predictor.predict(..., words=True)``, what the server asks for;
            ``None`` otherwise).
        word_attention: ``(len(words), h, w)`` where each word looked: the mean attention of its tokens over the
            region grid (all 0 for a word the model never read); heads with one attention row per token only.
        words_omitted: words of the text past :data:`MAX_VIEW_WORDS`, left out of :attr:`words`.
    """

    label: str
    probabilities: dict[str, float]
    threshold: float | None = None
    image_reliance: float | None = None
    attention: np.ndarray | None = None
    id: str | None = None
    image_present: bool = True
    token_attention: np.ndarray | None = None
    words: list[str] | None = None
    word_attention: np.ndarray | None = None
    words_omitted: int = 0

    @property
    def proba(self) -> dict[str, float]:
        """Same as :attr:`probabilities`."""
        return self.probabilities

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what the HTTP API returns)."""
        out: dict[str, Any] = {
            "label": self.label,
            "probabilities": self.probabilities,
            "threshold": self.threshold,
            "image_reliance": self.image_reliance,
            "attention": None,
        }
        if self.attention is not None:
            out["attention"] = {"grid": list(self.attention.shape), "weights": self.attention.round(6).tolist()}
            if self.words is not None and self.word_attention is not None:
                out["attention"]["words"] = [
                    {"word": w, "weights": np.asarray(a, dtype=np.float64).round(6).tolist()}
                    for w, a in zip(self.words, self.word_attention, strict=True)
                ]
                out["attention"]["words_omitted"] = self.words_omitted
        return out


MAX_VIEW_WORDS = 128
"""Words of a text given a word × region attention view by ``Predictor.predict(..., words=True)`` (text encoders
read at most a few hundred tokens; the rest are counted in ``Prediction.words_omitted``)."""


def image_crop(preprocess: Any) -> float | None:
    """How an image preprocessing frames an image, so that a map over the model's input image can be drawn on the
    original: ``None`` it resizes the whole image (stretched), else it reads the centre square, as a share of the
    short side (1.0: a plain centre crop; ``crop_pct`` for ConvNeXt-style processors).

    ``preprocess``: an image encoder's ``preprocess`` (or what ``load_preprocessing`` gives for an ONNX export)."""
    if preprocess is None:
        return None
    if getattr(preprocess, "resize", None) == "crop":
        return 1.0
    proc = getattr(preprocess, "processor", None)
    if proc is None:
        return None
    crop_pct = getattr(proc, "crop_pct", None)
    if crop_pct:
        return float(crop_pct)
    return 1.0 if getattr(proc, "do_center_crop", False) else None


def probabilities(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """``(N, C)`` logits → class probabilities, ``softmax(logits / temperature)`` in float64 (every backend's
    probabilities come from here); ``temperature``: the model's calibration temperature, ``None`` for none (1)."""
    z = torch.from_numpy(np.asarray(logits)).double()
    if temperature is not None and temperature != 1.0:
        z = z / float(temperature)
    return torch.softmax(z, dim=-1).numpy()


def predict_labels(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class ids: argmax, or for binary tasks with a ``threshold``, ``1`` where ``P(class 1) >= threshold``."""
    if threshold is not None and proba.shape[1] == 2:
        return (proba[:, 1] >= threshold).astype(np.int64)
    return proba.argmax(axis=1)


def grid_shape(regions: int, height: int = 1, width: int = 1) -> tuple[int, int]:
    """``(rows, cols)`` of a row-major grid of ``regions`` cells over an image of ``height × width`` pixels: the
    factorisation ``rows × cols = regions`` whose aspect ratio is closest to the image's (7 × 7 for 49 regions of a
    square image; rows <= cols on a tie). Encoders flatten their feature map row-major (see their ``forward``).

    A fallback only: image encoders report their grid (``EncoderOutput.grid``), and it travels with the model's
    outputs; this guess serves outputs that lack it (exports made before the grid was recorded)."""
    if regions <= 0:
        raise ValueError(f"regions must be positive, got {regions}")
    target = height / max(width, 1)
    shapes = [(r, regions // r) for r in range(1, regions + 1) if regions % r == 0]
    # distance of the aspect ratios in log space, rounded so that mirror ties (3 x 4, 4 x 3 of a square) are equal
    return min(shapes, key=lambda rc: (round(abs(math.log(rc[0] / rc[1] / target)), 9), rc[0]))


def attention_grid(
    attention: np.ndarray,
    valid: np.ndarray | None = None,
    image_size: tuple[int, int] = (1, 1),
    grid: tuple[int, int] | Sequence[int] | None = None,
):
    """``(B, Q, N)`` attention (or ``(B, N)``: one query) → ``(B, h, w)``: the mean over the valid query rows (text
    tokens, or the one pooled query), renormalised to sum to 1, laid out on the image's region grid.

    Args:
        attention: the head's attention weights.
        valid: ``(B, Q)`` bool, the rows to average (the text's attention mask); ``None``: all rows.
        image_size: the model input's ``(height, width)``, for :func:`grid_shape`'s guess when ``grid`` is ``None``.
        grid: ``(h, w)`` the image encoder reported (``FusionOutput.grid``); ``None``: guessed by :func:`grid_shape`
            (outputs of models from before encoders reported it).

    Raises:
        ValueError: ``grid`` does not have N cells.
    """
    att = np.asarray(attention, dtype=np.float64)
    if att.ndim == 2:  # (B, N): one query
        att = att[:, None, :]
    b, q, n = att.shape
    rows = np.ones((b, q), dtype=bool) if valid is None or valid.shape[1] != q else np.asarray(valid, dtype=bool)
    counts = np.maximum(rows.sum(axis=1, keepdims=True), 1)
    mean = (att * rows[:, :, None]).sum(axis=1) / counts  # (B, N)
    mean = mean / np.maximum(mean.sum(axis=1, keepdims=True), 1e-12)
    if grid is None:
        h, w = grid_shape(n, *image_size)
    else:
        h, w = int(grid[0]), int(grid[1])
        if h * w != n:
            raise ValueError(f"the image grid {h}×{w} has {h * w} cells, but the attention covers {n} regions")
    return mean.reshape(b, h, w)
