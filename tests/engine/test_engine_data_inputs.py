"""What training and `mmfuse predict` say about the data they read, through the real CLI (fake encoders): a preset
folder without its test file, a CP1250 split file and a repeated id at train time; at predict time a CSV file given
to a run trained on JSON lines, a file whose extension lies, labels the model never saw, rows sharing an id."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from _engine_support import make_config
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.data import make_synthetic


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def words(text: str) -> str:
    return " ".join(text.split())  # the console may wrap long lines


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic Hateful Memes layout without test.jsonl (as the public release without test labels), its train
    file in CP1250 with one Czech text, and one train id used by two different rows."""
    root = make_synthetic(tmp_path_factory.mktemp("partial"), n=80, seed=0)
    (root / "test.jsonl").unlink()
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[3]["text"] = "Žluťoučký kůň úpěl ďábelské ódy"
    rows[5]["id"] = rows[4]["id"]  # same id, another row: both are examples
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (root / "train.jsonl").write_bytes(text.encode("cp1250"))
    return root


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """The CLI's train run on ``dataset`` (fake encoders, one epoch): its folder and the CliRunner result."""
    from _engine_support import build_fake_image, build_fake_text

    import mmfuse.encoders

    out = tmp_path_factory.mktemp("partial_runs")
    data = {"fallback_encodings": ["cp1250"]}
    cfg = tmp_path_factory.mktemp("partial_cfg") / "cfg.yaml"
    cfg.write_text(make_config(dataset, out, data=data, train={"epochs": 1}).to_yaml(), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
        mp.setattr(mmfuse.encoders, "build_image_encoder", build_fake_image, raising=False)
        result = invoke("train", cfg)
    assert result.exit_code == 0, result.output
    return out / "run", result


def test_train_on_a_partial_preset_layout_says_what_data_check_says(trained, dataset: Path) -> None:
    run, result = trained
    rows = len((dataset / "train.jsonl").read_bytes().splitlines())
    expected = [
        "train: no test split: 'test.jsonl', which the preset 'hateful_memes' names, is not there; the data has no "
        "test split",
        "train: the file train.jsonl is not UTF-8: decoded as cp1250",
        f"train: 1 of {rows} rows with an id that an earlier row has too (both kept; ids need not be unique)",
    ]
    console = words(result.stderr)
    log = words((run / "train.log").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    for text in expected:
        assert f"warning: {text}" in console, text
        assert text in log, text
        assert any(text in w for w in summary["warnings"]), text
    assert summary["data"]["train"]["examples"] == rows and summary["data"]["train"]["duplicate_ids"] == 1
    assert summary["status"] == "completed" and "test" not in summary["data"]


def _rows(dataset: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset / "dev.jsonl").read_text(encoding="utf-8").splitlines()]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "img", "label", "text"])  # the header of the issue
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("where", ["root", "elsewhere"])
def test_predict_reads_a_csv_file_with_a_run_trained_on_json_lines(
    trained, fake_encoders, dataset: Path, tmp_path: Path, where: str
) -> None:
    run, _ = trained
    rows = _rows(dataset)
    folder = dataset if where == "root" else tmp_path
    source = _write_csv(folder / f"new_{where}.csv", rows)
    if where == "elsewhere":
        shutil.copytree(dataset / "img", tmp_path / "img")
    result = invoke("predict", run, source, "--out", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "preds.csv", dtype={"id": str})
    assert frame["id"].tolist() == [str(r["id"]) for r in rows] and frame["image_present"].all()
    assert "warning" not in result.stderr  # a .csv file read as CSV: nothing to say
    # the same predictions as from the JSON lines file
    check = invoke("predict", run, dataset / "dev.jsonl", "--out", tmp_path / "from_jsonl.csv")
    assert check.exit_code == 0, check.output
    pd.testing.assert_frame_equal(frame, pd.read_csv(tmp_path / "from_jsonl.csv", dtype={"id": str}))


def test_predict_reads_a_file_whose_extension_lies_by_its_content(
    trained, fake_encoders, dataset: Path, tmp_path: Path
) -> None:
    run, _ = trained
    lying = dataset / "dev_copy.csv"
    lying.write_bytes((dataset / "dev.jsonl").read_bytes())
    result = invoke("predict", run, lying, "--out", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "preds.csv")) == len(_rows(dataset))
    assert "holds JSON lines, not CSV as its extension '.csv' says: read as JSON lines" in words(result.stderr)


def test_predict_warns_once_about_labels_the_model_never_saw(
    trained, fake_encoders, dataset: Path, tmp_path: Path
) -> None:
    run, _ = trained
    rows = _rows(dataset)
    for i in (0, 2, 5):
        rows[i]["label"] = "maybe"
    rows[7]["label"] = 9
    source = dataset / "unseen.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("predict", run, source, "--out", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.output
    said = words(result.stderr)
    assert said.count("never saw") == 2  # the one warning, and the count in the last line
    assert (
        f"warning: 4 of {len(rows)} examples carry a label the model never saw: 'maybe' (3), '9' (1); it knows "
        "'0', '1'." in said
    )
    assert f"wrote {len(rows)} predictions to" in said and "(4 with a label the model never saw: 'maybe', '9')" in said
    assert len(pd.read_csv(tmp_path / "preds.csv")) == len(rows)
    # evaluate needs labels the model knows: refused, naming the known classes
    result = invoke("evaluate", run, "--data", source)
    assert result.exit_code == 2 and "known classes: '0', '1'" in words(result.stderr)


def test_predict_keeps_rows_that_share_an_id(trained, fake_encoders, dataset: Path, tmp_path: Path) -> None:
    run, _ = trained
    rows = _rows(dataset)[:6]
    rows[1]["id"] = rows[0]["id"]
    rows[1]["img"] = rows[4]["img"]  # another image under the same id: its own prediction
    source = dataset / "shared_ids.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = invoke("predict", run, source, "--out", tmp_path / "preds.csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "preds.csv", dtype={"id": str})
    assert frame["id"].tolist() == [str(r["id"]) for r in rows]
    by_image = invoke("predict", run, dataset / "dev.jsonl", "--out", tmp_path / "all.csv")
    assert by_image.exit_code == 0, by_image.output
    reference = pd.read_csv(tmp_path / "all.csv", dtype={"id": str}).set_index("id")
    # row 1 is predicted from its own text and image, not from the first row with its id: row 4's image with row
    # 1's text, so compare with a prediction of exactly that
    solo = dict(rows[1], id="solo")
    (dataset / "solo.jsonl").write_text(json.dumps(solo) + "\n", encoding="utf-8")
    assert invoke("predict", run, dataset / "solo.jsonl", "--out", tmp_path / "solo.csv").exit_code == 0
    # float32 sums over batches of another size differ in the last bits (2e-8 seen here); the two rows that share
    # an id differ by far more than the tolerance (asserted on the last line), so a mix-up cannot pass
    assert frame["proba"].iloc[1] == pytest.approx(pd.read_csv(tmp_path / "solo.csv")["proba"].iloc[0], abs=1e-5)
    assert frame["proba"].iloc[0] == pytest.approx(reference.loc[str(rows[0]["id"]), "proba"], abs=1e-5)
    assert frame["proba"].iloc[0] != pytest.approx(frame["proba"].iloc[1], abs=1e-3)
