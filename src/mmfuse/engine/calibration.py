"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one scalar ``T`` fitted after
training on the validation logits of the best checkpoint, so that ``softmax(logits / T)`` says how often the model is
right. The last checkpoint (``--checkpoint last``) gets its own fit on the same validation split when its weights
differ from the best one's, else the best one's; a checkpoint loaded without a temperature from a run that asked for
calibration warns (:class:`~mmfuse.model.predictor.UncalibratedWarning`).

``T`` minimises the validation negative log-likelihood (LBFGS on ``log T``, in float64). Dividing every logit by the
same positive number changes no argmax, so a multiclass model predicts the same labels; for a binary task ``P(class
1) >= 0.5`` is unchanged too, and the trainer tunes the decision threshold again on the calibrated probabilities (the
threshold's value moves with the probabilities; the validation examples it separates stay the same). ``T > 1``
softens an over-confident model, ``T < 1`` sharpens an under-confident one.

The NLL is convex in ``1 / T``, so it has one minimum, or none: when every validation example is classified right,
it keeps falling as ``T`` goes to 0 (a model sure of everything). The fit then keeps ``T = 1`` and says why, as it
does for a validation split too small to fit on. A minimum outside ``[T_MIN, T_MAX]`` (e.g. a model no better than
chance on validation, whose NLL falls all the way to uniform probabilities) is clamped to the nearer bound, which
still lowers the NLL, and the fit says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmfuse.engine.metrics import expected_calibration_error
from mmfuse.model.prediction import probabilities

__all__ = [
    "CALIBRATIONS", "MIN_EXAMPLES", "T_MAX", "T_MIN", "Calibration", "fit_temperature", "nll", "uncalibrated",
]  # fmt: skip

CALIBRATIONS = ("temperature", "none")
"""The values of ``train.calibrate``."""
T_MIN, T_MAX = 0.05, 20.0
"""The temperatures a fit may return; a minimum outside them is a sign of a degenerate validation split."""
MIN_EXAMPLES = 10
"""Fewer validation examples than this fit no temperature (one scalar, but a handful of examples is noise)."""


@dataclass(frozen=True)
class Calibration:
    """The outcome of :func:`fit_temperature`.

    Attributes:
        temperature: the fitted ``T``; ``None`` when none was fitted (then ``note`` says why).
        n: validation examples it was fitted on.
        nll_before: mean validation NLL of ``softmax(logits)``.
        nll_after: mean validation NLL of ``softmax(logits / T)`` (``nll_before`` when nothing was fitted).
        ece_before: expected calibration error before.
        ece_after: after.
        note: why no temperature was fitted, or why the fitted one was clamped to ``[T_MIN, T_MAX]``; else ``None``.
    """

    temperature: float | None
    n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``, in float64."""
    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    return float(F.cross_entropy(z / temperature, torch.from_numpy(np.asarray(labels, dtype=np.int64))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100) -> Calibration:
    """Fits the temperature that minimises the mean NLL of ``labels`` under ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` validation logits of the model to calibrate.
        labels: ``(N,)`` true class ids.
        max_iter: LBFGS iterations.

    Returns:
        The fit; ``temperature`` ``None`` (with a ``note``) when the validation split cannot give one: fewer than
        :data:`MIN_EXAMPLES` examples, or every example classified right (no finite minimum). A minimum outside
        ``[T_MIN, T_MAX]`` is clamped (with a ``note``). The fitted NLL is never above the uncalibrated one (else
        nothing is fitted).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    before = nll(logits, labels) if n else math.nan
    ece_before = expected_calibration_error(labels, probabilities(logits)) if n else math.nan

    def unfitted(note: str) -> Calibration:
        return Calibration(None, n, before, before, ece_before, ece_before, note)

    if n < MIN_EXAMPLES:
        return unfitted(f"only {n} validation examples (temperature scaling needs at least {MIN_EXAMPLES})")
    if (logits.argmax(axis=1) == labels).all():
        return unfitted(
            f"all {n} validation examples are classified right, so the likelihood keeps rising as the temperature "
            "goes to 0 (no finite minimum); a larger validation split would give one"
        )
    z = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0; starts at T = 1
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    if not math.isfinite(fitted):
        return unfitted(f"the fit diverged (temperature {fitted}); kept the model's own probabilities")
    temperature, note = min(max(fitted, T_MIN), T_MAX), None
    if temperature != fitted:  # the NLL is unimodal in T: the bound nearest its minimum still lowers it
        note = (
            f"the validation NLL is lowest at temperature {fitted:.3g}, outside [{T_MIN:g}, {T_MAX:g}]; clamped to "
            f"{temperature:g}" + (" (the model's validation predictions carry little signal)" if fitted > T_MAX else "")
        )
    after = nll(logits, labels, temperature)
    if not after <= before:  # LBFGS from T = 1 cannot end higher on a unimodal curve, unless it failed
        return unfitted(f"the fit did not lower the validation NLL ({before:.4f} -> {after:.4f})")
    ece_after = expected_calibration_error(labels, probabilities(logits, temperature))
    return Calibration(temperature, n, before, after, ece_before, ece_after, note)


def uncalibrated(proba: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before calibration, ``softmax(logits)``, from the calibrated ``softmax(logits / T)``:
    ``log p = logits / T - c`` per row, so ``softmax(T * log p) = softmax(logits)`` (exact up to rounding; a
    probability that rounded to 0 is taken as 1e-300)."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-300, None))
    return probabilities(logp * float(temperature))
