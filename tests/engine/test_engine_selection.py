"""Which epoch is kept (selection metric, ties broken by validation loss) and the tuned binary threshold."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.engine.metrics import improves, tune_threshold
from mmfuse.model.prediction import predict_labels


def test_a_better_selection_value_improves_whatever_the_loss() -> None:
    assert improves("auroc", {"auroc": 0.9, "loss": 0.8}, best=0.8, best_loss=0.1)
    assert not improves("auroc", {"auroc": 0.7, "loss": 0.01}, best=0.8, best_loss=0.5)
    assert improves("auroc", {"auroc": 0.5, "loss": 0.7}, best=None, best_loss=None)


def test_a_tie_of_the_selection_metric_goes_to_the_lower_validation_loss() -> None:
    # AUROC reaches 1.0 early on separable validation data; a later epoch with the same AUROC and a lower loss is
    # the better-trained model and must be kept (before: the first epoch at 1.0 was kept for good).
    assert improves("auroc", {"auroc": 1.0, "loss": 0.2}, best=1.0, best_loss=0.4)
    assert not improves("auroc", {"auroc": 1.0, "loss": 0.5}, best=1.0, best_loss=0.4)
    assert not improves("auroc", {"auroc": 1.0, "loss": float("nan")}, best=1.0, best_loss=0.4)
    assert not improves("auroc", {"auroc": None, "loss": 0.1}, best=1.0, best_loss=0.4)
    assert not improves("loss", {"loss": 0.4}, best=0.4, best_loss=0.4)  # loss is its own tie-break: no change


def test_the_threshold_sits_in_the_middle_of_the_gap_not_on_a_validation_score() -> None:
    # Separable validation scores: negatives up to 0.2, positives from 0.3. Every threshold in (0.2, 0.3] gives
    # F1 1.0; the old code returned 0.3, the lowest positive's own score, so a test positive at 0.29 was missed.
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4])
    threshold = tune_threshold(y, np.stack([1 - p1, p1], axis=1))
    assert threshold == pytest.approx(0.25)  # exact up to float rounding of (0.2 + 0.3) / 2
    test = np.array([[0.71, 0.29], [0.79, 0.21]])
    assert list(predict_labels(test, threshold)) == [1, 0]


def test_the_threshold_is_one_half_when_one_half_is_among_the_best() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.3, 0.7, 0.9])
    assert tune_threshold(y, np.stack([1 - p1, p1], axis=1)) == 0.5


def test_the_threshold_with_overlapping_scores_keeps_the_best_f1() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 200), 0, 1)
    proba = np.stack([1 - p1, p1], axis=1)
    threshold = tune_threshold(y, proba)

    def f1(t: float) -> float:
        pred = p1 >= t
        tp = np.sum(pred & (y == 1))
        return 2 * tp / (pred.sum() + (y == 1).sum())

    best = max(f1(t) for t in np.unique(p1))
    assert f1(threshold) == pytest.approx(best)  # exact counts; approx only for the float division
