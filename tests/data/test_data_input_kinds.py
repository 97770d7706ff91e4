"""Input kinds beyond CSV/JSONL: Parquet split files (data configs, `mmfuse data check`), images held in memory
(PIL images, bytes, ``datasets.Image`` values), Hugging Face datasets, and columns of the wrong kind."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data import ColumnKindError, DataConfig, load_splits
from mmfuse.data.inputs import inputs_of


def _rows(root: Path) -> list[dict]:
    return [
        {"id": e.id, "text": e.text, "image": str(e.image.relative_to(root)), "label": e.label}
        for e in load_splits(DataConfig(root=root, train="train.jsonl", columns={"image": "img"}, split={"val": 0}))[
            "train"
        ].examples
    ]


def test_a_parquet_split_file_reads_like_its_jsonl(tiny_dataset: Callable, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="reading Parquet needs pyarrow")
    root = tiny_dataset(n=6)
    frame = pd.DataFrame(_rows(root))
    frame["label"] = frame["label"].map({"a": 0, "b": 1})  # typed columns: ints, as a Parquet file holds them
    frame.to_parquet(root / "train.parquet")
    frame.to_json(root / "train.jsonl", orient="records", lines=True)
    cfg = {"root": str(root), "label_map": {"0": "a", "1": "b"}, "split": {"val": 0.25}}
    from_jsonl = load_splits(DataConfig(**{**cfg, "train": "train.jsonl"}))
    from_parquet = load_splits(DataConfig(**{**cfg, "train": "train.parquet"}))
    for name in ("train", "val"):
        assert from_parquet[name].examples == from_jsonl[name].examples
    # a data config naming it, through the CLI
    (tmp_path / "data.yaml").write_text(yaml.safe_dump({**cfg, "train": "train.parquet"}))
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "data.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["splits"]["train"]["examples"] == 9
    # not a Parquet file: said, with the fix
    (root / "broken.parquet").write_text("id,text\n")
    with pytest.raises(ValueError, match=r"'.*broken\.parquet' is not a readable Parquet file"):
        load_splits(DataConfig(**{**cfg, "train": "broken.parquet"}))


def test_a_data_config_without_files_cannot_load_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no split file given: set train"):
        load_splits(DataConfig(root=tmp_path))


def test_images_held_in_memory_are_written_once_by_content(tiny_dataset: Callable, tmp_path: Path) -> None:
    root = tiny_dataset(n=3)  # a* images are one red picture, b* one blue picture
    rows = [_rows(root)[i] for i in (0, 3, 1, 4, 2)]  # a0 b0 a1 b1 a2
    data = [(root / r["image"]).read_bytes() for r in rows]
    kinds = [
        Image.open(io.BytesIO(data[0])),  # a PIL image
        data[1],  # raw bytes
        {"bytes": data[2], "path": "ignored.png"},  # a datasets.Image value
        {"bytes": None, "path": str(root / rows[3]["image"])},  # a datasets.Image value kept as a path
        {"bytes": data[4], "path": None},
    ]
    memory = [{**r, "image": kind} for r, kind in zip(rows, kinds, strict=True)]
    cache = tmp_path / "cache"
    cfg = None  # the default column names
    got = inputs_of(memory, cfg, image_cache=cache)
    by_path = inputs_of(rows, cfg, image_root=root)
    assert [e.image.read_bytes() for e in got.examples] == [e.image.read_bytes() for e in by_path.examples]
    written = sorted(p.name for p in cache.iterdir())
    assert len(written) == 2 and all(name.endswith(".png") for name in written)  # the red and the blue picture
    assert {e.image for e in got.examples if e.image.parent == cache} == {cache / name for name in written}
    assert any("4 images held in column 'image'" in n and str(cache) in n for n in got.report.notes)


def test_a_hugging_face_dataset_reads_like_a_dataframe(tiny_dataset: Callable) -> None:
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is the extra `datasets`")
    root = tiny_dataset(n=3)
    frame = pd.DataFrame(_rows(root))
    cfg = None  # the default column names
    dataset = datasets.Dataset.from_pandas(frame)
    assert inputs_of(dataset, cfg, image_root=root).examples == inputs_of(frame, cfg, image_root=root).examples
    with pytest.raises(TypeError, match=r"pass one split, e.g. dataset\['train'\]"):
        inputs_of(datasets.DatasetDict({"train": dataset}), cfg)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("label", [None, None], r"column 'label' \(columns\.label\): every one of the 2 rows has no label"),
        ("text", [["a"], {"b": 1}], r"column 'text' \(columns\.text\), e\.g\. row 0: text is a list.*no value is a "
         "string; set columns.text"),
        ("image", [3, 4.5], r"column 'image' \(columns\.image\), e\.g\. row 0: image is a int \('3'\): it holds "
         "numbers"),
        ("image", [["a.png"], ["b.png"]], r"column 'image' \(columns\.image\), e\.g\. row 0: image is a list.*no "
         "value is one of image file paths"),
    ],
)  # fmt: skip
def test_a_column_of_the_wrong_kind_names_the_column_and_a_value(column: str, values: list, message: str) -> None:
    rows = [{"id": str(i), "text": "t", "image": "a.png", "label": "x"} for i in range(2)]
    for row, value in zip(rows, values, strict=True):
        row[column] = value
    with pytest.raises(ColumnKindError, match=message):
        inputs_of(rows, None, labeled=True)


def test_a_label_column_with_no_value_reads_unlabeled_when_labels_are_optional(tmp_path: Path) -> None:
    rows = [{"id": "1", "text": "t", "image": "a.png", "label": None}]
    inputs = inputs_of(rows, None)  # predict: labels optional
    assert inputs.report.labeled is False and inputs.examples[0].label is None


def test_image_root_resolves_relative_paths_of_examples_and_files(tiny_dataset: Callable, tmp_path: Path) -> None:
    from mmfuse.data import Example

    root = tiny_dataset(n=2)
    rows = _rows(root)
    examples = [Example(id=r["id"], text=r["text"], image=r["image"], label=r["label"]) for r in rows]
    got = inputs_of(examples, None, image_root=root).examples
    assert [e.image for e in got] == [root / r["image"] for r in rows] and all(e.image.is_file() for e in got)
    # a file elsewhere: its images resolve against image_root rather than the file's folder
    pd.DataFrame(rows).to_csv(tmp_path / "elsewhere.csv", index=False)
    split = inputs_of(tmp_path / "elsewhere.csv", None, image_root=root)
    assert [e.image for e in split.examples] == [(root / r["image"]).resolve() for r in rows]
    assert split.report.blank_images == []
