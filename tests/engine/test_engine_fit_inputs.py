"""MultimodalClassifier built from column names, and fit(train_data, tuning_data, *, time_limit, image_root) on
every input kind: DataFrames, Parquet files, Hugging Face datasets (image paths or images held in memory)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _engine_support import make_config
from PIL import Image

from mmfuse.data import ColumnKindError, UnseenLabelError
from mmfuse.engine.classifier import MultimodalClassifier


def _frame(examples, root: Path | None = None) -> pd.DataFrame:
    """The examples as a user's DataFrame with their own column names; image paths relative to ``root`` when
    given, else absolute."""
    return pd.DataFrame(
        {
            "review_text": [e.text for e in examples],
            "image_path": [str(e.image.relative_to(root) if root else e.image) for e in examples],
            "sentiment": [int(e.label) for e in examples],
        }
    )


def _named_columns(synthetic_root: Path, out: Path, **train) -> MultimodalClassifier:
    """A fast config without data, and the columns named by the shortcuts."""
    cfg = make_config(synthetic_root, out, data=None, train={"epochs": 1, **train})
    return MultimodalClassifier(cfg, label="sentiment", text="review_text", image="image_path")


def test_column_shortcuts_name_the_columns_without_a_data_config(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    clf = MultimodalClassifier(label="sentiment", text="review_text", image="image_path", id="post", head="align")
    columns = clf.config.data.columns
    named = (columns.label, columns.text, columns.image, columns.id)
    assert named == ("sentiment", "review_text", "image_path", "post")
    assert clf.config.model.head.name == "align" and clf.config.data.train is None
    with pytest.raises(ValueError, match=r"no split file given.*only says how to read rows passed to fit"):
        clf.fit()

    clf = _named_columns(synthetic_root, tmp_path)
    train, val, test = (_frame(synthetic_splits[s].examples) for s in ("train", "val", "test"))
    clf.fit(train, val)
    assert clf.classes == ["0", "1"]
    # the column names travel with the model: a loaded one reads the same DataFrame the same way
    loaded = MultimodalClassifier.load(clf.save(tmp_path / "model"))
    assert loaded.config.data.columns.text == "review_text"
    np.testing.assert_array_equal(loaded.predict_proba(test), clf.predict_proba(test))


def test_without_tuning_data_a_seeded_stratified_share_is_held_out(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    frame = _frame(synthetic_splits["train"].examples)
    n = len(frame)
    clf = _named_columns(synthetic_root, tmp_path / "a").fit(frame)
    counts = clf.summary["data"]
    held = round(0.2 * n)  # holdout_frac defaults to data.split.val, 0.2
    assert (counts["train"]["examples"], counts["val"]["examples"]) == (n - held, held)
    assert any("held out for validation, seed 0, stratified by label" in note for note in clf.summary["notes"])
    assert "held out for validation" in (Path(clf.summary["run_dir"]) / "train.log").read_text()
    # same seed, same hold-out: a second fit validates on the same rows (the same history)
    again = _named_columns(synthetic_root, tmp_path / "b").fit(frame)
    assert again.history[0]["val"] == clf.history[0]["val"]
    # holdout_frac sets the share; old keyword names still work
    other = _named_columns(synthetic_root, tmp_path / "c").fit(train=frame, holdout_frac=0.3)
    assert other.summary["data"]["val"]["examples"] == round(0.3 * n)
    with pytest.raises(TypeError, match="both train_data= and train="):
        _named_columns(synthetic_root, tmp_path / "d").fit(frame, train=frame)


def test_the_hold_out_keeps_class_shares(synthetic_root: Path, synthetic_splits: dict) -> None:
    from mmfuse.data import SplitConfig
    from mmfuse.data.inputs import hold_out, inputs_of

    examples = synthetic_splits["train"].examples
    train, val = hold_out(inputs_of(list(examples), None), 0.2, SplitConfig(seed=3))
    share = Counter(e.label for e in examples)["1"] / len(examples)
    # stratified: the held-out share of class "1" is the whole set's, up to one example's rounding
    assert abs(Counter(e.label for e in val.examples)["1"] / len(val.examples) - share) <= 1 / len(val.examples)
    assert {e.id for e in train.examples}.isdisjoint(e.id for e in val.examples)
    assert len(train.examples) + len(val.examples) == len(examples)


def test_time_limit_stops_at_an_epoch_boundary_and_keeps_the_best(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    train, val = synthetic_splits["train"], synthetic_splits["val"]
    # a limit far below one epoch: the first epoch always runs, none after it fits
    clf = MultimodalClassifier(make_config(synthetic_root, tmp_path / "a", train={"epochs": 3}))
    clf.fit(train, val, time_limit=1e-3)
    assert clf.summary["status"] == "time_limit" and clf.summary["epochs_run"] == 1
    assert [r["epoch"] for r in clf.history] == [1] and clf.summary["best_epoch"] == 1
    assert any("stopped for the time limit" in note for note in clf.summary["notes"])
    assert (clf.run_dir.path / "checkpoints" / "best").is_dir() and clf.config.train.time_limit == 1e-3
    # the same from the config (train.time_limit, what the CLI sets)
    cfg = make_config(synthetic_root, tmp_path / "b", train={"epochs": 3, "time_limit": 1e-3})
    assert MultimodalClassifier(cfg).fit(train, val).summary["status"] == "time_limit"
    # without a limit nothing changes
    unlimited = MultimodalClassifier(make_config(synthetic_root, tmp_path / "c", train={"epochs": 2})).fit(train, val)
    assert unlimited.summary["status"] == "completed" and "notes" not in unlimited.summary


def test_image_root_resolves_relative_image_paths(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths would resolve here by default: no images
    train, val = (_frame(synthetic_splits[s].examples, synthetic_root) for s in ("train", "val"))
    clf = _named_columns(synthetic_root, tmp_path / "a").fit(train, val, image_root=synthetic_root)
    assert clf.summary["data"]["train"]["blank_images"] == 0 and clf.summary["data"]["val"]["blank_images"] == 0
    blind = _named_columns(synthetic_root, tmp_path / "b").fit(train, val)
    assert blind.summary["data"]["train"]["blank_images"] == len(train)
    with pytest.raises(FileNotFoundError, match=r"image_root .* is not a folder"):
        _named_columns(synthetic_root, tmp_path / "c").fit(train, val, image_root=tmp_path / "nowhere")


def test_parquet_files_train_like_dataframes(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow", reason="reading Parquet needs pyarrow")
    paths = {}
    for split in ("train", "val", "test"):
        # relative image paths: a file's images resolve against its own folder
        _frame(synthetic_splits[split].examples, synthetic_root).to_parquet(synthetic_root / f"{split}.parquet")
        paths[split] = synthetic_root / f"{split}.parquet"
    clf = _named_columns(synthetic_root, tmp_path).fit(str(paths["train"]), paths["val"])
    assert clf.summary["data"]["train"]["blank_images"] == 0
    frame = _frame(synthetic_splits["test"].examples)
    np.testing.assert_array_equal(clf.predict_proba(paths["test"]), clf.predict_proba(frame))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_hugging_face_datasets_with_paths_or_images(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is the extra `datasets`")
    train, val, test = (_frame(synthetic_splits[s].examples) for s in ("train", "val", "test"))
    by_path = {s: datasets.Dataset.from_pandas(f) for s, f in (("train", train), ("val", val), ("test", test))}
    images = datasets.Features(
        {"review_text": datasets.Value("string"), "image_path": datasets.Image(), "sentiment": datasets.Value("int64")}
    )

    def embedded(frame: pd.DataFrame):
        """The same rows with the images themselves (PNG bytes, decoded as PIL images by datasets)."""
        rows = {**frame.to_dict("list"), "image_path": [_png(Image.open(p)) for p in frame["image_path"]]}
        return datasets.Dataset.from_dict(rows, features=images)

    cfg = make_config(synthetic_root, tmp_path, data=None, train={"epochs": 1}, cache={"dir": str(tmp_path / "c")})
    clf = MultimodalClassifier(cfg, label="sentiment", text="review_text", image="image_path")
    clf.fit(embedded(train), embedded(val))
    written = sorted((tmp_path / "c" / "images").glob("*.png"))
    assert len(written) == len(set(train["image_path"]) | set(val["image_path"]))  # one file per distinct image
    assert any("were written to" in note and str(tmp_path / "c" / "images") in note for note in clf.summary["notes"])
    assert clf.summary["data"]["train"]["blank_images"] == 0
    # the same pixels from paths or from images in memory: the same probabilities
    np.testing.assert_array_equal(clf.predict_proba(embedded(test)), clf.predict_proba(by_path["test"]))
    np.testing.assert_array_equal(clf.predict_proba(by_path["test"]), clf.predict_proba(test))
    # a ClassLabel column reads as its class names (here not the model's classes, so evaluate names them)
    named = by_path["val"].cast_column("sentiment", datasets.ClassLabel(names=["neg", "pos"]))
    with pytest.raises(UnseenLabelError, match=r"label '(neg|pos)' was not seen in training"):
        clf.evaluate(named)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("sentiment", [None, float("nan"), None], r"column 'sentiment' \(columns\.label\).*every one of the 3 rows "
         r"has no label"),
        ("review_text", [["a", "b"], ["c"], ["d"]], r"column 'review_text' \(columns\.text\), e\.g\. row 0: text is a "
         r"list \(\"\['a', 'b'\]\"\).*no value is a string"),
        ("image_path", [1, 2, 3], r"column 'image_path' \(columns\.image\), e\.g\. row 0: image is a int \('1'\).*"
         r"holds numbers, not image file paths"),
    ],
)  # fmt: skip
def test_a_column_of_the_wrong_kind_is_named_with_a_value(
    fake_encoders, synthetic_root: Path, tmp_path: Path, column: str, values: list, message: str
) -> None:
    frame = pd.DataFrame({"review_text": ["x", "y", "z"], "image_path": ["a.png"] * 3, "sentiment": [0, 1, 0]})
    frame[column] = pd.Series(values, dtype=object)
    with pytest.raises(ColumnKindError, match=message):
        _named_columns(synthetic_root, tmp_path).fit(frame, frame)
