"""The Python API's inference extras: pandas outputs, scikit-learn scorers by name, embeddings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _engine_support import make_config
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, log_loss, roc_auc_score

from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.engine.metrics import UnknownMetricError


@pytest.fixture
def fitted(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path) -> MultimodalClassifier:
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 1})
    return MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])


def _frame(examples, index: list[str]) -> pd.DataFrame:
    """The examples as a user's DataFrame with an index of its own (not 0..N-1) and no id column."""
    return pd.DataFrame(
        {"text": [e.text for e in examples], "img": [str(e.image) for e in examples],
         "label": [int(e.label) for e in examples]},
        index=pd.Index(index, name="tweet"),
    )  # fmt: skip


def test_pandas_outputs_are_indexed_like_the_input(fitted: MultimodalClassifier, synthetic_splits: dict) -> None:
    test = synthetic_splits["test"].examples
    frame = _frame(test, [f"t{i}" for i in reversed(range(len(test)))])
    proba = fitted.predict_proba(frame)
    table = fitted.predict_proba(frame, as_pandas=True)
    assert isinstance(table, pd.DataFrame) and table.index.equals(frame.index)
    assert list(table.columns) == fitted.classes
    np.testing.assert_array_equal(table.to_numpy(), proba)
    labels = fitted.predict(frame, as_pandas=True)
    assert isinstance(labels, pd.Series) and labels.index.equals(frame.index) and labels.name == "label"
    assert labels.tolist() == fitted.predict(frame)
    # examples (not a DataFrame): indexed by their ids
    by_id = fitted.predict_proba(test, as_pandas=True)
    assert by_id.index.name == "id" and by_id.index.tolist() == [e.id for e in test]
    np.testing.assert_array_equal(by_id.to_numpy(), proba)


def test_evaluate_computes_scikit_learn_scorers_by_name(fitted: MultimodalClassifier, synthetic_splits: dict) -> None:
    test = synthetic_splits["test"].examples
    y = np.array([int(e.label) for e in test])
    proba = fitted.predict_proba(test)
    names = ["accuracy", "f1_macro", "roc_auc", "neg_log_loss", "average_precision", "f1"]
    scores = fitted.evaluate(test, metrics=names)
    assert list(scores) == names
    # the same numbers as scikit-learn's metric functions on the model's own probabilities (same arrays, same calls)
    assert scores["accuracy"] == accuracy_score(y, proba.argmax(1))
    assert scores["f1_macro"] == f1_score(y, proba.argmax(1), average="macro")
    assert scores["f1"] == f1_score(y, proba.argmax(1))
    assert scores["roc_auc"] == roc_auc_score(y, proba[:, 1])
    assert scores["average_precision"] == average_precision_score(y, proba[:, 1])
    assert scores["neg_log_loss"] == -log_loss(y, proba)
    # no metrics: the full evaluation as before
    assert {"split", "n", "metrics", "baselines"} <= set(fitted.evaluate(test))
    with pytest.raises(UnknownMetricError, match=r"unknown metric 'f1_marco'; did you mean 'f1_macro'.*roc_auc_ovr"):
        fitted.evaluate(test, metrics=["accuracy", "f1_marco"])
    with pytest.raises(TypeError, match=r"pass \['accuracy'\]"):
        fitted.evaluate(test, metrics="accuracy")


def test_multiclass_scorers(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path) -> None:
    def three(split) -> list:
        return [dataclasses.replace(e, label=["cat", "dog", "eel"][int(e.id) % 3]) for e in split.examples]

    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 1})
    clf = MultimodalClassifier(cfg).fit(three(synthetic_splits["train"]), three(synthetic_splits["val"]))
    test = three(synthetic_splits["test"])
    y = np.array([clf.classes.index(e.label) for e in test])
    proba = clf.predict_proba(test)
    scores = clf.evaluate(test, metrics=["roc_auc_ovr", "f1_weighted"])
    assert scores["roc_auc_ovr"] == roc_auc_score(y, proba, multi_class="ovr")
    assert scores["f1_weighted"] == f1_score(y, proba.argmax(1), average="weighted")
    with pytest.raises(ValueError, match=r"metric 'roc_auc' does not apply here.*use e\.g\. roc_auc_ovr"):
        clf.evaluate(test, metrics=["roc_auc"])


@pytest.mark.numerics
def test_extract_embedding(fitted: MultimodalClassifier, synthetic_splits: dict) -> None:
    test = synthetic_splits["test"].examples
    head = fitted.model
    fused = fitted.extract_embedding(test)
    assert fused.shape == (len(test), head.classifier[-1].in_features) and fused.dtype == np.float32
    # the embedding is what the head classifies: its last layer on it gives the model's probabilities. The 15 test
    # rows fit one evaluation batch, so the same operations run on the same shapes (0.0 difference measured, on vector
    # and on scalar kernels); the tolerance is float32 rounding, for a batch size that would split them differently
    with torch.no_grad():
        logits = head.classifier[-1](torch.from_numpy(fused)).double()
    t = fitted.temperature or 1.0  # probabilities are calibrated: softmax(logits / T)
    np.testing.assert_allclose((logits / t).softmax(-1).numpy(), fitted.predict_proba(test), atol=1e-6)

    text = fitted.extract_embedding(test, kind="text")
    image = fitted.extract_embedding(test, kind="image")
    with torch.no_grad():  # the frozen encoders run directly (not through the precomputed features): the same vectors
        direct_text = head.text_encoder(head.text_encoder.tokenize([e.text for e in test])).pooled.numpy()
        pixels = torch.stack([head.image_encoder.preprocess(_image(e.image)) for e in test])
        direct_image = head.image_encoder(pixels).pooled.numpy()
    # as above: one batch, 0.0 measured; 1e-5 for float32 rounding were the rows batched (and padded) otherwise
    np.testing.assert_allclose(text, direct_text, atol=1e-5)
    np.testing.assert_allclose(image, direct_image, atol=1e-5)
    # DataFrames work as for predict
    frame = _frame(test, [str(i) for i in range(len(test))])
    np.testing.assert_array_equal(fitted.extract_embedding(frame, kind="text"), text)
    with pytest.raises(ValueError, match=r"unknown embedding kind 'joint'; use one of 'fused', 'text', 'image'"):
        fitted.extract_embedding(test, kind="joint")


def test_a_modality_the_model_does_not_read_has_no_embedding(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 1}, model={"head": "text_only"})
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    test = synthetic_splits["test"].examples
    assert clf.extract_embedding(test, kind="text").shape == (len(test), 32)
    with pytest.raises(ValueError, match=r"the 'text_only' model reads no image.*use kind='fused' or kind='text'"):
        clf.extract_embedding(test, kind="image")


def _image(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
