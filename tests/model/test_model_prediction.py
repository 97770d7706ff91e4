"""The one prediction rule set: labels from probabilities, the region grid, attention on the grid."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.model.prediction import Prediction, attention_grid, grid_shape, predict_labels, probabilities


def test_labels_threshold_for_binary_tasks_else_argmax():
    binary = np.array([[0.55, 0.45], [0.7, 0.3], [0.4, 0.6]])
    assert list(predict_labels(binary)) == [0, 0, 1]
    assert list(predict_labels(binary, 0.4)) == [1, 0, 1]  # P(class 1) >= threshold
    three = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    assert list(predict_labels(three, 0.1)) == [1, 0]  # a threshold means nothing for more classes


def test_probabilities_are_a_float64_softmax():
    proba = probabilities(np.array([[0.0, 0.0], [1.0, 3.0]], dtype=np.float32))
    assert proba.dtype == np.float64
    assert proba[0].tolist() == [0.5, 0.5]
    assert proba[1, 1] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-15)  # float64 softmax: exact to rounding


@pytest.mark.parametrize(
    ("regions", "size", "shape"),
    [(49, (224, 224), (7, 7)), (12, (300, 400), (3, 4)), (12, (400, 300), (4, 3)), (12, (1, 1), (3, 4)),
     (50, (100, 200), (5, 10)), (6, (100, 600), (1, 6))],
)  # fmt: skip
def test_grid_shape_follows_the_image_aspect(regions, size, shape):
    assert grid_shape(regions, *size) == shape


def test_attention_grid_averages_the_valid_rows_and_sums_to_one():
    att = np.zeros((2, 3, 4))
    att[0, 0] = [1, 0, 0, 0]
    att[0, 1] = [0, 0, 0, 1]
    att[0, 2] = [0, 1, 0, 0]  # a padding row: left out
    att[1, :] = [0.25, 0.25, 0.25, 0.25]
    valid = np.array([[True, True, False], [True, True, True]])
    grid = attention_grid(att, valid, (32, 32))
    assert grid.shape == (2, 2, 2)
    assert grid[0].tolist() == [[0.5, 0.0], [0.0, 0.5]]
    assert grid[1].tolist() == [[0.25, 0.25], [0.25, 0.25]]
    pooled = attention_grid(np.array([[2.0, 2.0, 0.0, 0.0]]))  # (B, N): one query, renormalised
    assert pooled.tolist() == [[[0.5, 0.5], [0.0, 0.0]]]


def test_a_prediction_answers_http_with_the_same_fields_as_before():
    p = Prediction(label="b", probabilities={"a": 0.25, "b": 0.75}, threshold=0.5, attention=np.full((2, 2), 0.25),
                   id="x1", image_present=False)  # fmt: skip
    assert p.proba == p.probabilities
    assert p.to_dict() == {
        "label": "b",
        "probabilities": {"a": 0.25, "b": 0.75},
        "threshold": 0.5,
        "image_reliance": None,
        "attention": {"grid": [2, 2], "weights": [[0.25, 0.25], [0.25, 0.25]]},
    }
