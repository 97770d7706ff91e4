"""Classification metrics (scikit-learn), baselines computed the same way, and the binary decision threshold.

Labels from probabilities follow the one rule of :func:`~mmfuse.model.prediction.predict_labels`.

Every function takes integer labels ``y`` ``(N,)`` and class probabilities ``proba`` ``(N, C)`` in the label map's
class order. For binary tasks the positive class is class 1 (the second in the label map: ``"1"`` of ``0/1``
labels, ``offensive`` of ``non-offensive/offensive``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
)

from mmfuse._registry import did_you_mean
from mmfuse.model.prediction import predict_labels

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "weighted_f1": True, "auroc": True, "loss": False}
"""Metrics a run can select on, and their direction."""


def selection_metric(name: str, num_classes: int) -> str:
    """Resolves ``auto``: AUROC for binary tasks (threshold-free), macro-F1 otherwise."""
    if name == "auto":
        return "auroc" if num_classes == 2 else "macro_f1"
    return name


def is_better(name: str, value: float | None, best: float | None) -> bool:
    """Whether ``value`` of metric ``name`` improves on ``best`` (a missing value never does)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if HIGHER_IS_BETTER[name] else value < best


def improves(name: str, val: dict[str, Any], best: float | None, best_loss: float | None) -> bool:
    """Whether an epoch's validation metrics ``val`` improve on the best epoch so far: a better value of the
    selection metric ``name``, or the same value with a lower validation loss.

    The tie-break matters on easy or small validation sets, where AUROC (or accuracy) reaches its maximum early and
    stays there: keeping the first such epoch keeps a less trained model whose probabilities sit nearer 0.5, so
    more test examples fall on the wrong side of the cut.
    """
    value = val.get(name)
    if is_better(name, value, best):
        return True
    tied = value is not None and best is not None and value == best
    return name != "loss" and tied and is_better("loss", val.get("loss"), best_loss)


def auroc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """Binary AUROC of class 1, or one-vs-rest macro AUROC over the classes present in ``y``.

    ``None`` when it is undefined (fewer than two classes in ``y``).
    """
    present = np.unique(y)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    if len(present) == proba.shape[1]:
        return float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    # some classes absent from y: average one-vs-rest over the present ones
    return float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in present]))


def classification_metrics(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], *, threshold: float | None = None
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, weighted F1, AUROC, per-class scores and the confusion matrix.

    Args:
        y: true class ids ``(N,)``.
        proba: ``(N, C)`` probabilities.
        classes: class names, in id order.
        threshold: binary decision threshold on ``P(class 1)``; ``None`` = argmax (0.5).
    """
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    labels = list(range(len(classes)))
    pred = predict_labels(proba, threshold)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "auroc": auroc(y, proba),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def tune_threshold(y: np.ndarray, proba: np.ndarray) -> float:
    """The decision threshold on ``P(class 1)`` that maximizes the F1 of class 1 on these (validation) examples.

    F1 of the positive class is what detection tasks care about (hateful/offensive is the rarer, costlier class),
    and unlike accuracy it does not reward predicting the majority class. The F1 of ``P >= t`` only changes where
    ``t`` passes an example's score, so the best thresholds form gaps between two neighbouring scores ``(lo, hi]``.
    0.5 wins when it lies in such a gap, else the gap's middle nearest to 0.5: a threshold on a validation example's
    own score (what precision_recall_curve returns) leaves no margin to the examples on either side of it. Returns
    0.5 when ``y`` has a single class.
    """
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y == 1, proba[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]  # the last point has no threshold
    scores = np.unique(proba[:, 1])  # ascending; thresholds[i] is one of them
    candidates = []
    for hi in thresholds[np.isclose(f1, f1.max())]:
        below = scores[scores < hi]
        lo = float(below[-1]) if len(below) else 0.0  # no score below: anything down to 0 gives the same F1
        candidates.append(0.5 if lo < 0.5 <= hi else (lo + float(hi)) / 2)
    candidates = np.asarray(candidates)
    return float(candidates[np.argmin(np.abs(candidates - 0.5))])


ECE_BINS = 10
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15; 10 is the reliability
diagram's, so the number matches the picture)."""


def confidence_bins(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability diagram's bins of the top-label confidence: per non-empty bin of equal width over ``[0, 1]``,
    the mean ``confidence`` (top probability), the ``accuracy`` (share where the top class is the true one) and the
    ``count`` of examples; the last bin includes 1."""
    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    conf, correct = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1]), 0, bins - 1)
    return [
        {"confidence": float(conf[m].mean()), "accuracy": float(correct[m].mean()), "count": int(m.sum())}
        for b in range(bins)
        if (m := which == b).any()
    ]


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-label confidence: the gap between mean confidence and accuracy in
    each of ``bins`` equal-width bins, weighted by the bin's share of examples (0: calibrated; NaN: no examples)."""
    n = len(y)
    if n == 0:
        return math.nan
    return float(sum(abs(b["confidence"] - b["accuracy"]) * b["count"] / n for b in confidence_bins(y, proba, bins)))


def brier_score(y: np.ndarray, proba: np.ndarray) -> float:
    """Brier score (scikit-learn's ``brier_score_loss``, lower is better): for binary tasks the mean squared gap
    between P(class 1) and the 0/1 label, for more classes the mean over examples of the summed squared gaps of
    every class's probability to its one-hot label (0 to 2)."""
    if len(y) == 0:
        return math.nan
    proba = np.asarray(proba, dtype=np.float64)
    return float(brier_score_loss(np.asarray(y, dtype=np.int64), proba, labels=list(range(proba.shape[1]))))


def calibration_metrics(
    y: np.ndarray, proba: np.ndarray, *, temperature: float | None = None, uncalibrated: np.ndarray | None = None
) -> dict[str, Any]:
    """``ece`` and ``brier`` of ``proba``; for a calibrated model (its ``temperature`` and its ``uncalibrated``
    probabilities ``softmax(logits)``) also ``temperature``, ``ece_uncalibrated`` and ``brier_uncalibrated``."""
    out: dict[str, Any] = {"ece": expected_calibration_error(y, proba), "brier": brier_score(y, proba)}
    if temperature is not None and uncalibrated is not None:
        out.update(
            temperature=float(temperature),
            ece_uncalibrated=expected_calibration_error(y, uncalibrated),
            brier_uncalibrated=brier_score(y, uncalibrated),
        )
    return out


def baseline_probas(train_y: Sequence[int], n: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Probabilities of the two reference predictors for ``n`` examples, fitted on the training labels.

    - ``majority``: always the most frequent training class (probabilities = the training class prior, so its
      AUROC is 0.5).
    - ``random``: a class drawn at random with the training class prior (seeded).
    """
    train_y = np.asarray(train_y, dtype=np.int64)
    x_train, x = np.zeros((len(train_y), 1)), np.zeros((n, 1))
    out = {}
    for name, strategy in (("majority", "prior"), ("random", "stratified")):
        dummy = DummyClassifier(strategy=strategy, random_state=seed).fit(x_train, train_y)
        proba = np.zeros((n, num_classes))
        proba[:, dummy.classes_] = dummy.predict_proba(x)
        out[name] = proba
    return out


def baseline_metrics(
    train_y: Sequence[int], y: np.ndarray, classes: Sequence[str], seed: int = 0
) -> dict[str, dict[str, Any]]:
    """:func:`classification_metrics` of the majority-class and random baselines on labels ``y``."""
    probas = baseline_probas(train_y, len(y), len(classes), seed)
    return {name: classification_metrics(y, proba, classes) for name, proba in probas.items()}


def evaluation(
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    *,
    split: str,
    threshold: float | None = None,
    train_class_counts: Sequence[int] | None = None,
    seed: int = 0,
    other_baselines: Mapping[str, np.ndarray] | None = None,
    temperature: float | None = None,
    uncalibrated: np.ndarray | None = None,
) -> dict[str, Any]:
    """What ``evaluate`` returns (a classifier's or an ensemble's): ``split``, ``n``, ``classes``, ``metrics``,
    ``calibration`` (:func:`calibration_metrics`: ECE and Brier score, and for a model calibrated with a
    ``temperature`` the same of its ``uncalibrated`` probabilities); for binary tasks with a tuned ``threshold``
    that and ``metrics_at_threshold``; with training-label counts the majority-class and random ``baselines``
    (drawn with ``seed``), and beside them ``other_baselines`` (name -> their probabilities on the same examples,
    e.g. ``zero_shot``)."""
    result: dict[str, Any] = {
        "split": split,
        "n": len(y),
        "classes": list(classes),
        "metrics": classification_metrics(y, proba, classes),
        "calibration": calibration_metrics(y, proba, temperature=temperature, uncalibrated=uncalibrated),
    }
    if len(classes) == 2 and threshold is not None:
        result["threshold"] = threshold
        result["metrics_at_threshold"] = classification_metrics(y, proba, classes, threshold=threshold)
    train_y = np.repeat(np.arange(len(classes)), train_class_counts or 0)
    if len(train_y):
        result["baselines"] = baseline_metrics(train_y, y, classes, seed=seed)
    for name, other in (other_baselines or {}).items():
        result.setdefault("baselines", {})[name] = classification_metrics(y, other, classes)
    return result


class UnknownMetricError(ValueError):
    """A metric name that is not a scikit-learn scorer; the message lists the known names."""


def check_scorer_names(names: Sequence[str]) -> list[str]:
    """The scikit-learn scorer names in ``names`` (:func:`sklearn.metrics.get_scorer_names`), in order, once each.

    Raises:
        UnknownMetricError: a name that is not one of them (naming it, the closest names and all known ones).
        TypeError: ``names`` is a single string rather than a list of names.
    """
    from sklearn.metrics import get_scorer_names

    if isinstance(names, str):
        raise TypeError(f"metrics must be a list of scorer names, got the string {names!r}; pass [{names!r}]")
    known = get_scorer_names()
    for name in names:
        if name not in known:
            raise UnknownMetricError(
                f"unknown metric {name!r}{did_you_mean(name, known)}; metrics are scikit-learn scorer names: "
                f"{', '.join(known)}"
            )
    return list(dict.fromkeys(names))


class _Precomputed(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose answers are already known: ``X`` is a column of row numbers into ``proba``. It lets
    scikit-learn's own scorers (:func:`sklearn.metrics.get_scorer`) pick the response each metric needs (labels,
    or the probability of the positive class, or all probabilities) exactly as for a real estimator."""

    def __init__(self, proba: np.ndarray, pred: np.ndarray) -> None:
        self.proba, self.pred = proba, pred
        self.classes_ = np.arange(proba.shape[1])

    def fit(self, x: Any, y: Any = None) -> _Precomputed:
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.pred[np.asarray(x, dtype=np.int64).ravel()]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.proba[np.asarray(x, dtype=np.int64).ravel()]


def scorer_metrics(y: np.ndarray, proba: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Scikit-learn scorers by name on labels ``y`` and probabilities ``proba``: label metrics (``accuracy``,
    ``f1_macro``, ...) on the most probable class (as ``classification_metrics``' without a threshold), probability
    metrics (``roc_auc``, ``roc_auc_ovr``, ``neg_log_loss``, ``average_precision``, ...) on the probabilities, class 1
    being the positive class of a binary task. Values are the scorers' (``neg_*`` are negated losses).

    Raises:
        UnknownMetricError: a name that is not a scorer.
        ValueError: a scorer that does not apply to these labels (e.g. ``roc_auc`` or ``f1`` for more than two
            classes), naming it and saying what scikit-learn said.
    """
    from sklearn.metrics import get_scorer

    y = np.asarray(y, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    estimator = _Precomputed(proba, predict_labels(proba, None))
    rows = np.arange(len(y))[:, None]
    out = {}
    for name in check_scorer_names(names):
        try:
            out[name] = float(get_scorer(name)(estimator, rows, y))
        except ValueError as err:
            hint = ""
            if proba.shape[1] > 2 and name in ("roc_auc", "average_precision", "f1", "precision", "recall", "jaccard"):
                hint = f"; with {proba.shape[1]} classes use e.g. roc_auc_ovr, f1_macro, precision_macro"
            raise ValueError(f"metric {name!r} does not apply here: {err}{hint}") from err
    return out


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics only (no per-class scores, no confusion matrix): one row of a table or a JSON line."""
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


def evaluation_scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation result (``MultimodalClassifier.evaluate``): for ``summary.json`` and
    tables; the tuned-threshold metrics and the baselines' accuracy and macro-F1 flattened beside them."""
    out = {"n": result["n"], **headline(result["metrics"])}
    if "metrics_at_threshold" in result:
        out["threshold"] = result["threshold"]
        out["accuracy_at_threshold"] = result["metrics_at_threshold"]["accuracy"]
        out["macro_f1_at_threshold"] = result["metrics_at_threshold"]["macro_f1"]
    for key in ("ece", "brier", "temperature"):
        if key in result.get("calibration", {}):
            out[key] = result["calibration"][key]
    for name, metrics in result.get("baselines", {}).items():
        out[f"{name}_accuracy"] = metrics["accuracy"]
        out[f"{name}_macro_f1"] = metrics["macro_f1"]
    if "missing_images" in result:
        out["missing_images"] = result["missing_images"]
    return out
