"""Files read as what they hold (not as their extension or the config says), presets on partial layouts, and clean
messages for data config errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data import DataConfig, DataConfigError, load_data_config, load_examples, load_splits

runner = CliRunner()
ROWS = [{"id": f"r{i}", "text": f"text {i}", "img": f"img/{i % 2}.png", "label": str(i % 2)} for i in range(6)]


@pytest.fixture
def root(tmp_path: Path, write_image: Callable) -> Path:
    for i in range(2):
        write_image(tmp_path / "img" / f"{i}.png", color=(200 * i, 30, 30))
    return tmp_path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "img", "label", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _jsonl_config(root: Path) -> DataConfig:
    # the config of a run trained on JSON lines: format named, as the hateful_memes preset does
    return DataConfig(root=root, format="jsonl", train="train.jsonl", columns={"image": "img"})


def test_a_csv_file_given_to_a_jsonl_config_is_read_as_csv(root: Path) -> None:
    _write_csv(root / "new.csv", ROWS)
    split = load_examples("new.csv", _jsonl_config(root))
    assert [e.id for e in split.examples] == [r["id"] for r in ROWS]
    assert not split.report.bad_rows
    (note,) = split.report.notes
    assert "'new.csv'" not in note and "new.csv" in note  # the full path, quoted
    assert "holds CSV, not JSON lines as format: jsonl in the data config says: read as CSV" in note


@pytest.mark.parametrize(
    ("name", "kind", "said"),
    [
        ("lies.csv", "jsonl", "holds JSON lines, not CSV as its extension '.csv' says: read as JSON lines"),
        ("lies.jsonl", "csv", "holds CSV, not JSON lines as its extension '.jsonl' says: read as CSV"),
        ("rows.dat", "csv", "read as CSV, from its content (its extension '.dat' says no format)"),
    ],
)
def test_a_file_whose_extension_lies_is_read_by_its_content_and_said(
    root: Path, name: str, kind: str, said: str
) -> None:
    path = root / name
    if kind == "csv":
        _write_csv(path, ROWS)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    cfg = DataConfig(root=root, train=name, columns={"image": "img"})  # format: auto
    split = load_examples(name, cfg)
    assert [e.text for e in split.examples] == [r["text"] for r in ROWS]
    assert any(said in n for n in split.report.notes), split.report.notes


def test_a_file_whose_content_and_extension_agree_gets_no_note(root: Path) -> None:
    _write_csv(root / "ok.csv", ROWS)
    split = load_examples("ok.csv", DataConfig(root=root, train="ok.csv", columns={"image": "img"}))
    assert len(split) == len(ROWS) and split.report.notes == []


def test_a_file_of_no_known_format_is_refused_with_the_fix(root: Path) -> None:
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(ValueError, match=r"cannot tell the format of .*blob\.bin.*set format: jsonl, csv or parquet"):
        load_examples("blob.bin", DataConfig(root=root, train="blob.bin", columns={"image": "img"}))


# --- presets on partial layouts -------------------------------------------------------------------------------------


def _hateful_memes(root: Path, files: tuple[str, ...]) -> Path:
    for name in files:
        rows = [{**r, "id": f"{name}{r['id']}"} for r in ROWS * 3]
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


def test_a_preset_without_its_test_file_loads_train_and_dev_and_says_so(root: Path) -> None:
    _hateful_memes(root, ("train.jsonl", "dev.jsonl"))
    splits = load_splits(DataConfig(root=root, preset="hateful_memes"))
    assert list(splits) == ["train", "val"]
    assert splits["val"].report.source == "dev.jsonl"
    assert any(
        "no test split: 'test.jsonl', which the preset 'hateful_memes' names, is not there" in n
        for n in splits["train"].report.notes
    ), splits["train"].report.notes


def test_a_preset_without_its_dev_file_carves_val_off_train(root: Path) -> None:
    _hateful_memes(root, ("train.jsonl",))
    splits = load_splits(DataConfig(root=root, preset="hateful_memes"))
    assert list(splits) == ["train", "val"] and "carved off" in splits["val"].report.source
    notes = " ".join(splits["train"].report.notes)
    assert "no val split: 'dev.jsonl'" in notes and "0.2 of train is carved off for val" in notes
    assert "no test split: 'test.jsonl'" in notes


def test_a_split_file_named_by_the_user_stays_required(root: Path) -> None:
    _hateful_memes(root, ("train.jsonl", "dev.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"holdout\.jsonl"):
        load_splits(DataConfig(root=root, preset="hateful_memes", test="holdout.jsonl"))


def test_data_check_on_a_partial_preset_layout(root: Path) -> None:
    _hateful_memes(root, ("train.jsonl", "dev.jsonl"))
    result = runner.invoke(app, ["data", "check", str(root), "--preset", "hateful_memes"])
    assert result.exit_code == 0, result.output
    assert "no test split: 'test.jsonl', which the preset 'hateful_memes' names, is not there" in " ".join(
        result.output.split()
    )


# --- clean config messages -----------------------------------------------------------------------------------------


def test_an_unknown_preset_is_one_clean_line_listing_the_known_ones(root: Path) -> None:
    with pytest.raises(DataConfigError) as exc:
        load_data_config({"root": str(root), "preset": "hatefull_memes"})
    message = str(exc.value)
    assert "unknown data preset 'hatefull_memes'; known: hateful_memes, multioff, mvsa_single" in message
    assert "did you mean 'hateful_memes'?" in message
    assert "pydantic" not in message and "http" not in message and "validation error for" not in message

    result = runner.invoke(app, ["data", "check", str(root), "--preset", "hatefull_memes"])
    assert result.exit_code == 2
    assert "known: hateful_memes, multioff, mvsa_single" in result.output
    assert "pydantic" not in result.output and "Traceback" not in result.output


def test_a_wrong_value_in_a_yaml_data_config_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text("root: .\ntrain: t.jsonl\nsplit: {val: 2}\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(config)])
    assert result.exit_code == 2
    assert "split.val: split.val must be a fraction in [0, 1), got 2" in result.output
    assert "errors.pydantic.dev" not in result.output
