"""`mmfuse data check`'s table says what its JSON says: every defect it lists with its file name, the split file's
encoding, names that rich would read as markup; on the real datasets and on a small CP1250-encoded CSV."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data import load_examples
from mmfuse.data.missing_images import missing_images

SHOWN = 3  # the table lists the first 3 of each kind (cli.data._SHOWN); the JSON lists them all


def check(*args: str) -> tuple[str, dict]:
    """The table (whitespace folded: rich wraps long cells) and the JSON of `mmfuse data check ARGS`."""
    wide = {"COLUMNS": "300"}
    table = CliRunner().invoke(app, ["data", "check", *args], env=wide)
    as_json = CliRunner().invoke(app, ["data", "check", *args, "--json"], env=wide)
    assert table.exit_code == as_json.exit_code, table.output
    return " ".join(table.output.split()), json.loads(as_json.output)


def assert_table_says_what_json_says(table: str, payload: dict) -> None:
    listed = 0
    for name, split in payload["splits"].items():
        encoding = split["file_encoding"]
        if encoding:
            assert f"{encoding} (not UTF-8)" in table, (name, encoding)
        for kind, problems in split.items():
            if not (isinstance(problems, list) and problems and isinstance(problems[0], dict)):
                continue
            for p in problems[:SHOWN]:
                shown = f"id {p['id']}: {p['reason']}" if p["id"] is not None else f"{p['where']}: {p['reason']}"
                shown += f" [{p['path']}]" if p["path"] else ""
                assert " ".join(shown.split()) in table, (name, kind, shown)
                listed += 1
        for note in split["notes"]:
            assert " ".join(note.split()) in table, note
    assert listed, "the data has defects to list"


@pytest.mark.slow  # each check decodes every image of the real dataset: 15-20 s on 2 cores
@pytest.mark.parametrize("name", ["mvsa_single", "multioff"])
def test_the_table_of_a_real_dataset_names_every_listed_file(shared_datasets: Path, name: str) -> None:
    table, payload = check(str(shared_datasets / name), "--preset", name)
    assert_table_says_what_json_says(table, payload)
    if name == "mvsa_single":  # paths starting with a lowercase letter in brackets, which rich reads as markup
        assert "[data/3059.txt]" in table
    else:
        (skipped,) = payload["splits"]["val"]["skipped_images"]
        assert skipped["path"] == "Labelled Images/KbTk7Rq.png" and f"[{skipped['path']}]" in table


@pytest.fixture
def cp1250_dataset(tmp_path: Path, write_image: Callable) -> Path:
    """A CP1250 CSV: 8 rows of Czech text, one image outside the root, one row naming none, one missing file,
    one file name that rich would read as markup, and one id used twice."""
    for i in range(8):
        write_image(tmp_path / "img" / f"{i}.png", color=(30 * i, 0, 0))
    lines = ["id,text,image,label"] + [f"{i},Žluťoučký kůň {i},img/{i}.png,{i % 2}" for i in range(8)]
    lines += ["8,x,/etc/hostname,0", "9,y,,1", "10,z,[bold]img/nope.png,1", "3,again,img/5.png,1"]
    (tmp_path / "train.csv").write_bytes(("\n".join(lines) + "\n").encode("cp1250"))
    config = {"root": ".", "train": "train.csv", "fallback_encodings": ["cp1250"], "split": {"val": 0.25}}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return tmp_path


def test_the_table_shows_the_split_files_encoding_and_every_skipped_name(cp1250_dataset: Path) -> None:
    table, payload = check(str(cp1250_dataset / "data.yaml"))
    train = payload["splits"]["train"]
    assert train["file_encoding"] == "cp1250" and payload["splits"]["val"]["file_encoding"] == "cp1250"
    assert table.count("cp1250 (not UTF-8)") == 2  # the row of train and of the val carved off it
    assert [p["path"] for p in train["skipped_images"]] == ["/etc/hostname", None, "[bold]img/nope.png"]
    assert_table_says_what_json_says(table, payload)
    assert [(p["where"], p["id"]) for p in train["duplicate_ids"]] == [("row 12 (line 13)", "3")]


def test_missing_images_of_rows_sharing_an_id_keep_their_own_paths(cp1250_dataset: Path, tmp_path: Path) -> None:
    rows = "id,text,image,label\nk,a,img/gone1.png,0\nk,b,img/gone2.png,1\n"
    (cp1250_dataset / "twice.csv").write_text(rows, encoding="utf-8")
    from mmfuse.data import DataConfig

    split = load_examples("twice.csv", DataConfig(root=cp1250_dataset, on_missing_image="blank"))
    found = missing_images(split.examples, report=split.report)
    assert [(p.id, p.path) for p in found.blanked] == [("k", "img/gone1.png"), ("k", "img/gone2.png")]


def test_training_warns_about_every_kind_that_data_check_lists(cp1250_dataset: Path) -> None:
    from mmfuse.data import load_data_config, load_splits
    from mmfuse.data.inputs import data_warnings

    splits = load_splits(load_data_config(cp1250_dataset / "data.yaml").model_copy(update={"on_missing_image": "skip"}))
    reports = {name: split.report for name, split in splits.items()}
    said = "\n".join(data_warnings(reports, {}))
    train = reports["train"]
    assert train.problem_lists(), "the data has defects"
    for kind, problems in train.problem_lists().items():
        head, first = f"train: {len(problems)} of {train.rows} ", str(problems[0])
        assert any(w.startswith(head) and first in w for w in said.splitlines()), (kind, said)
    assert "train: the file train.csv is not UTF-8: decoded as cp1250" in said
