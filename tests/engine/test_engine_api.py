"""The Python API: MultimodalClassifier fit / predict / predict_proba / evaluate / save / load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _engine_support import make_config

from mmfuse.data import UnseenLabelError
from mmfuse.data.readers import BadRowError, MissingColumnError
from mmfuse.engine.classifier import MultimodalClassifier, NotFittedError


@pytest.fixture
def fitted(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path) -> MultimodalClassifier:
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 2})
    return MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])


@pytest.mark.numerics
def test_fit_predict_evaluate(fitted: MultimodalClassifier, synthetic_splits: dict) -> None:
    test = synthetic_splits["test"]
    assert fitted.classes == ["0", "1"]
    proba = fitted.predict_proba(test)
    assert proba.shape == (len(test.examples), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert fitted.predict(test) == [fitted.classes[i] for i in proba.argmax(axis=1)]
    at = 0.9
    assert fitted.predict(test, threshold=at) == ["1" if p >= at else "0" for p in proba[:, 1]]
    # batch-independent: in a batch of 3 or of all, probabilities differ by float rounding only (<= 1.6e-8 measured)
    assert fitted.predict_proba(test.examples[:3]) == pytest.approx(proba[:3], abs=1e-6)

    result = fitted.evaluate(test)
    y = np.array([int(e.label) for e in test.examples])
    assert result["n"] == len(y) and result["classes"] == ["0", "1"]
    assert result["metrics"]["accuracy"] == pytest.approx(float((proba.argmax(axis=1) == y).mean()))
    assert np.asarray(result["metrics"]["confusion_matrix"]).sum() == len(y)
    assert set(result["baselines"]) == {"majority", "random"}
    assert result["threshold"] == fitted.threshold and "metrics_at_threshold" in result


def test_predict_works_without_labels(fitted: MultimodalClassifier, synthetic_splits: dict) -> None:
    examples = synthetic_splits["test"].examples
    unlabeled = [dataclasses.replace(e, label=None) for e in examples]
    np.testing.assert_array_equal(fitted.predict_proba(unlabeled), fitted.predict_proba(examples))
    table = fitted.predictions_table(unlabeled)
    assert list(table.columns) == ["id", "proba", "label", "image_present"]
    with pytest.raises(ValueError, match="have no label; evaluate needs labels"):
        fitted.evaluate(unlabeled)


def test_save_load_round_trip(fitted: MultimodalClassifier, synthetic_splits: dict, tmp_path: Path) -> None:
    test = synthetic_splits["test"]
    folder = fitted.save(tmp_path / "model")
    assert {"model.safetensors", "meta.json", "config.yaml", "label_map.json"} <= {p.name for p in folder.iterdir()}
    loaded = MultimodalClassifier.load(folder)
    assert loaded.classes == fitted.classes and loaded.threshold == fitted.threshold
    np.testing.assert_array_equal(loaded.predict_proba(test), fitted.predict_proba(test))
    assert loaded.evaluate(test)["baselines"] == fitted.evaluate(test)["baselines"]
    # the run folder's best checkpoint holds the same model the fitted classifier kept
    from_run = MultimodalClassifier.load(fitted.run_dir.path)
    np.testing.assert_array_equal(from_run.predict_proba(test), fitted.predict_proba(test))
    assert [r["epoch"] for r in from_run.history] == [1, 2]


def test_unseen_label_names_it_and_the_known_classes(fitted: MultimodalClassifier, synthetic_splits: dict) -> None:
    examples = list(synthetic_splits["test"].examples)
    examples[3] = dataclasses.replace(examples[3], label="maybe")
    with pytest.raises(UnseenLabelError, match=r"label 'maybe' was not seen in training; known classes: '0', '1'"):
        fitted.evaluate(examples)


def test_predict_warns_about_labels_the_model_never_saw(
    fitted: MultimodalClassifier, synthetic_splits: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """The Python API says what ``mmfuse predict`` says (one warning naming the labels and the known classes, as a
    Python warning and in the log), and predicts as without the labels; labels it knows are no news."""
    import warnings

    from mmfuse.model import TorchPredictor

    examples = list(synthetic_splits["test"].examples)
    for i in (0, 4):
        examples[i] = dataclasses.replace(examples[i], label="maybe")
    said = f"2 of {len(examples)} examples carry a label the model never saw: 'maybe' (2); it knows '0', '1'."
    unlabeled = [dataclasses.replace(e, label=None) for e in examples]
    loaded = TorchPredictor.from_run(fitted.run_dir.path)
    calls = {
        "predict": lambda: fitted.predict(examples),
        "predict_proba": lambda: fitted.predict_proba(examples, as_pandas=True),
        "predict_details": lambda: fitted.predict_details(examples),
        "predictions_table": lambda: fitted.predictions_table(examples),
        "TorchPredictor.predict_proba": lambda: loaded.predict_proba(examples),
    }
    for name, call in calls.items():
        caplog.clear()
        with pytest.warns(UserWarning) as caught:
            call()
        unseen = [w for w in caught if "never saw" in str(w.message)]
        assert len(unseen) == 1 and str(unseen[0].message).startswith(said), (name, caught)
        assert type(unseen[0].message).__name__ == "UnseenLabelsWarning", name
        assert unseen[0].filename == __file__, name  # points at the user's line, not inside mmfuse
        assert [r.getMessage() for r in caplog.records if "never saw" in r.getMessage()] == [str(unseen[0].message)]
    with pytest.warns(UserWarning, match="never saw"):
        proba = fitted.predict_proba(examples)
    np.testing.assert_array_equal(proba, fitted.predict_proba(unlabeled))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known labels (and none): no warning at all
        fitted.predict(synthetic_splits["test"])
        fitted.predict(unlabeled)


def test_unseen_val_label_fails_before_training(
    fake_encoders, synthetic_root: Path, synthetic_splits, tmp_path
) -> None:
    val = [dataclasses.replace(e, label="2") for e in synthetic_splits["val"].examples]
    with pytest.raises(UnseenLabelError, match="'2'"):
        MultimodalClassifier(make_config(synthetic_root, tmp_path)).fit(synthetic_splits["train"], val)
    assert not (tmp_path / "run").exists()


def test_not_fitted(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path) -> None:
    # (fit without validation examples holds some out: tests/engine/test_engine_fit_inputs.py)
    clf = MultimodalClassifier(make_config(synthetic_root, tmp_path))
    with pytest.raises(NotFittedError, match="call fit"):
        clf.predict(synthetic_splits["test"])


def test_multiclass_predictions_table(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path) -> None:
    def three(split) -> list:
        return [dataclasses.replace(e, label=["cat", "dog", "eel"][int(e.id) % 3]) for e in split.examples]

    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 1})
    clf = MultimodalClassifier(cfg).fit(three(synthetic_splits["train"]), three(synthetic_splits["val"]))
    assert clf.classes == ["cat", "dog", "eel"] and clf.threshold is None
    assert clf.summary["selection_metric"] == "macro_f1"
    table = clf.predictions_table(three(synthetic_splits["test"]))
    assert list(table.columns) == ["id", "proba_cat", "proba_dog", "proba_eel", "label", "image_present"]
    probas = table[["proba_cat", "proba_dog", "proba_eel"]].to_numpy()
    np.testing.assert_allclose(probas.sum(axis=1), 1.0, rtol=1e-6)
    assert table["label"].tolist() == [clf.classes[i] for i in probas.argmax(axis=1)]
    result = clf.evaluate(three(synthetic_splits["test"]))
    assert len(result["metrics"]["confusion_matrix"]) == 3 and "metrics_at_threshold" not in result


def _frame(examples) -> pd.DataFrame:
    """The examples as a user's DataFrame (column names as the run's data.columns): absolute image paths as strings,
    integer labels, no id column."""
    return pd.DataFrame(
        {"text": [e.text for e in examples], "img": [str(e.image) for e in examples],
         "label": [int(e.label) for e in examples]}
    )  # fmt: skip


def test_dataframes_and_lists_of_dicts_work_as_files_do(
    fitted: MultimodalClassifier, synthetic_splits: dict, tmp_path: Path, fake_encoders, synthetic_root: Path
) -> None:
    test = synthetic_splits["test"].examples
    frame = _frame(test)
    # same inputs, same model: the very same numbers as from the examples themselves (the same code path after reading)
    np.testing.assert_array_equal(fitted.predict_proba(frame), fitted.predict_proba(test))
    np.testing.assert_array_equal(fitted.predict_proba(frame.to_dict("records")), fitted.predict_proba(test))
    assert fitted.predict(frame) == fitted.predict(test)
    assert fitted.evaluate(frame)["metrics"] == fitted.evaluate(test)["metrics"]
    # fit takes DataFrames too: ids are row numbers, labels read as strings like a file's
    train, val = (_frame(synthetic_splits[s].examples) for s in ("train", "val"))
    clf = MultimodalClassifier(make_config(synthetic_root, tmp_path / "df", train={"epochs": 1})).fit(train, val)
    assert clf.classes == ["0", "1"] and clf.predict_proba(frame).shape == (len(test), 2)


def test_a_dataframe_with_a_bad_column_names_the_row_and_column(fitted: MultimodalClassifier) -> None:
    with pytest.raises(
        MissingColumnError, match=r"column 'text' \(columns\.text\) not found; columns present: 'caption'"
    ):
        fitted.predict_proba(pd.DataFrame({"caption": ["a"], "img": [None]}))
    with pytest.raises(BadRowError, match=r"row 0.*text is a list"):
        fitted.predict_proba(pd.DataFrame({"text": [["not", "a", "string"]], "img": [None]}))
    with pytest.raises(TypeError, match=r"not Example but int; pass a list of Example, a pandas DataFrame"):
        fitted.predict_proba([1, 2])
