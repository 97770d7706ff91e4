"""What training says about its data, through the real CLI: rows and images it left out (how many, why) on the
console, in train.log, summary.json and the HTML report; classes with fewer than 5 examples; a seeded split that
could not be stratified. And ``mmfuse evaluate RUN`` on data without a test split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from _engine_support import make_config
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cli import app

BAD_ROWS = (5, 17, 33)  # rows with an empty label
TYPO_ROW = 40  # labeled 'Positive' beside 'positive'
MISSING_IMAGE_ROW = 50  # names an image that does not exist


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def words(text: str) -> str:
    return " ".join(text.split())  # the console may wrap long lines


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text", "image", "label"])
        writer.writeheader()
        writer.writerows(rows)


def make_dataset(root: Path, n_train: int = 60, n_val: int = 20, labels: tuple[str, ...] = ("negative", "positive")):
    """``train.csv`` and ``val.csv`` with one small PNG per row, under ``root``."""
    (root / "img").mkdir(parents=True)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            label = labels[i % len(labels)]
            name = f"img/{split}{i}.png"
            shade = 40 if label == labels[0] else 200
            Image.new("RGB", (8, 8), (shade, i % 256, 90)).save(root / name)
            rows.append({"id": f"{split}{i}", "text": f"{label} words {i}", "image": name, "label": label})
        splits[split] = rows
    return splits


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 train rows of which 3 have no label, one is labeled 'Positive' and one names a missing image."""
    root = tmp_path_factory.mktemp("messy")
    splits = make_dataset(root)
    train = splits["train"]
    for i in BAD_ROWS:
        train[i]["label"] = ""
    train[TYPO_ROW]["label"] = "Positive"
    train[MISSING_IMAGE_ROW]["image"] = "img/nowhere.png"
    write_csv(root / "train.csv", train)
    write_csv(root / "val.csv", splits["val"])
    return root


@pytest.fixture(scope="module")
def trained(messy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The CLI's train run on the messy data (fake encoders): its folder and the CliRunner result."""
    from _engine_support import build_fake_image, build_fake_text

    import mmfuse.encoders

    out = tmp_path_factory.mktemp("messy_runs")
    data = {"preset": None, "train": "train.csv", "val": "val.csv", "on_bad_row": "skip"}
    cfg = tmp_path_factory.mktemp("messy_cfg") / "cfg.yaml"
    cfg.write_text(make_config(messy, out, data=data, train={"epochs": 1}).to_yaml(), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mmfuse.encoders, "build_text_encoder", build_fake_text, raising=False)
        mp.setattr(mmfuse.encoders, "build_image_encoder", build_fake_image, raising=False)
        result = invoke("train", cfg)
    assert result.exit_code == 0, result.output
    return out / "run", result


def test_train_says_what_it_left_out_everywhere(trained) -> None:
    run, result = trained
    expected = [
        "train: 3 of 60 rows skipped as unreadable (on_bad_row: skip): "
        + "; ".join(f"id train{i}: empty label in field 'label'" for i in BAD_ROWS),
        "train: 1 of 60 examples dropped for a missing or unreadable image (on_missing_image: skip): "
        f"id train{MISSING_IMAGE_ROW}: file not found [img/nowhere.png]",
        "class 'Positive' has only 1 training example(s) (fewer than 5)",
    ]
    console = words(result.stderr)
    log = words((run / "train.log").read_text(encoding="utf-8"))
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    for text in expected:
        assert f"warning: {text}" in console, text
        assert text in log, text
        assert any(text in w for w in summary["warnings"]), text
    assert summary["data"]["train"] == {
        "rows": 60, "examples": 56, "bad_rows": 3, "duplicate_ids": 0, "skipped_images": 1, "blank_images": 0,
    }  # fmt: skip
    assert summary["data"]["val"]["examples"] == 20 and summary["data"]["val"]["bad_rows"] == 0


def test_report_shows_what_training_left_out(trained, fake_encoders, tmp_path: Path) -> None:
    run, _ = trained
    result = invoke("report", run, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Training warned about its data" in page
    assert "3 of 60 rows skipped as unreadable" in page and "class &#x27;Positive&#x27; has only 1" in page
    assert "bad rows skipped" in page


def test_evaluate_without_a_test_split_evaluates_val_and_says_so(trained, fake_encoders, tmp_path: Path) -> None:
    run, _ = trained
    out_json = tmp_path / "eval.json"
    result = invoke("evaluate", run, "--json", out_json)
    assert result.exit_code == 0, result.output
    assert "evaluating the val split (the data has no labeled test split" in words(result.stderr)
    evaluation = json.loads(out_json.read_text())
    assert evaluation["split"] == "val" and evaluation["n"] == 20

    result = invoke("evaluate", run, "--split", "test")
    assert result.exit_code == 2
    message = words(result.stderr)
    assert "no 'test' split" in message and "train (56 examples)" in message and "--split val" in message


def test_train_warns_when_the_seeded_split_cannot_stratify(fake_encoders, tmp_path: Path) -> None:
    # 3 classes and a val share of 2 examples: too few to hold every class, so the split falls back to random
    root = tmp_path / "data"
    splits = make_dataset(root, labels=("a", "b", "c"))
    write_csv(root / "train.csv", splits["train"])
    data = {"preset": None, "train": "train.csv", "split": {"val": 0.03}}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(make_config(root, tmp_path / "runs", data=data, train={"epochs": 1}).to_yaml(), encoding="utf-8")
    result = invoke("train", cfg)
    assert result.exit_code == 0, result.output
    text = "train: the seeded split is not stratified by label"
    assert f"warning: {text}" in words(result.stderr)
    assert text in words((tmp_path / "runs" / "run" / "train.log").read_text(encoding="utf-8"))
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text(encoding="utf-8"))
    assert any(text in w and "should be greater or equal to the number of classes" in w for w in summary["warnings"])
