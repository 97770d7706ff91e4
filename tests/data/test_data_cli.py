"""`mmfuse data check / preview / synth` through typer's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mmfuse.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synth"
    result = runner.invoke(app, ["data", "synth", str(out), "--n", "80", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 80 examples (dev 12, test 12, train 56)" in result.output
    return out


def test_synth_writes_the_hateful_memes_layout(synthetic: Path) -> None:
    assert {p.name for p in synthetic.iterdir()} == {"train.jsonl", "dev.jsonl", "test.jsonl", "img"}
    assert len(list((synthetic / "img").glob("*.png"))) == 80


def test_check_folder_with_preset(synthetic: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(synthetic), "--preset", "hateful_memes"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "examples" in result.output and "data usable" in result.output


def test_check_json(synthetic: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(synthetic), "--preset", "hateful_memes", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["usable"] is True
    assert {n: s["examples"] for n, s in payload["splits"].items()} == {"train": 56, "val": 12, "test": 12}


def test_check_yaml_with_data_section_and_relative_root(synthetic: Path) -> None:
    folder = synthetic.parent / "configs" / "sub"
    folder.mkdir(parents=True)
    config = folder / "run.yaml"
    # relative to the YAML file's folder, not to the working directory (the repository here)
    relative_root = str(Path("..") / ".." / synthetic.name)
    config.write_text(yaml.safe_dump({"data": {"root": relative_root, "preset": "hateful_memes"}, "seed": 0}))
    result = runner.invoke(app, ["data", "check", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["splits"]["train"]["examples"] == 56


def test_check_fails_on_unusable_data(tmp_path: Path, write_image: Callable, write_jsonl: Callable) -> None:
    write_image(tmp_path / "a.png")
    write_jsonl(tmp_path / "train.jsonl", [{"id": i, "text": "t", "image": "a.png", "label": "same"} for i in range(5)])
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"root": ".", "train": "train.jsonl", "split": {"val": 0.4}}))
    result = runner.invoke(app, ["data", "check", str(config)])
    assert result.exit_code == 1
    assert "UNUSABLE" in result.output and "one class only" in result.output and "data unusable" in result.output


def test_check_fails_when_error_policy_meets_bad_rows(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    write_image(tmp_path / "a.png")
    rows = [{"id": i, "text": "t", "image": "a.png", "label": i % 2} for i in range(6)]
    write_jsonl(tmp_path / "train.jsonl", rows, raw_lines={3: "{broken"})
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"root": ".", "train": "train.jsonl"}))
    result = runner.invoke(app, ["data", "check", str(config), "--json"])
    assert result.exit_code == 1
    train = json.loads(result.output)["splits"]["train"]
    assert [p["where"] for p in train["bad_rows"]] == ["line 4"]
    assert any("on_bad_row: error" in f for f in train["fatal"])
    config.write_text(yaml.safe_dump({"root": ".", "train": "train.jsonl", "on_bad_row": "skip"}))
    assert runner.invoke(app, ["data", "check", str(config)]).exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{folder}"], "pass --preset NAME"),
        (["{folder}", "--preset", "nope"], "unknown data preset 'nope'"),
        (["{folder}/missing.yaml"], "not found"),
        (["{folder}", "--preset", "multioff"], "split file"),
    ],
)
def test_check_argument_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["data", "check", *[a.format(folder=tmp_path) for a in args]])
    assert result.exit_code == 2
    assert message in result.output


def test_bad_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"root": ".", "train": "t.jsonl", "on_bad_rows": "skip"}))
    result = runner.invoke(app, ["data", "check", str(config)])
    assert result.exit_code == 2 and "unknown key(s) 'on_bad_rows'" in result.output


def test_preview_writes_a_png_grid(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    args = [
        "data",
        "preview",
        str(synthetic),
        "--preset",
        "hateful_memes",
        "--split",
        "val",
        "--n",
        "6",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 6 examples of val" in result.output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 300
    result = runner.invoke(app, [*args[:5], "--split", "holdout", "--out", str(out)])
    assert result.exit_code == 2 and "no split 'holdout'" in result.output


def _wide(output: str) -> str:
    """The output without table borders, with single spaces: a cell that wraps reads as one line again."""
    return " ".join(output.replace("│", " ").split())


# Strings rich would read as markup: a style tag, a stray bracket, a closing tag with nothing to close (rich raised
# MarkupError), and a missing file, listed as "file not found [data/3059.jpg]": a lowercase path in brackets, which
# rich dropped silently as an unknown style.
@pytest.mark.parametrize("odd_id", ["b[/]1", "b1"])
def test_check_shows_names_with_brackets_as_written(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable, odd_id: str
) -> None:
    pos, neg, odd_image, missing = "[bold]pos", "neg]", "img/[bold]x.png", "data/3059.jpg"
    rows = [{"id": f"p{i}", "text": "t", "image": f"img/p{i}.png", "label": pos} for i in range(4)]
    rows += [{"id": f"n{i}", "text": "t", "image": f"img/n{i}.png", "label": neg} for i in range(3)]
    rows += [{"id": odd_id, "text": "t", "image": "img/n9.png", "label": neg}]
    rows += [{"id": "gone", "text": "t", "image": missing, "label": pos}]
    rows += [{"id": "odd", "text": "t", "image": odd_image, "label": neg}]
    for row in rows[:-2]:
        write_image(tmp_path / row["image"])
    write_jsonl(tmp_path / "train.jsonl", rows)
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"root": ".", "train": "train.jsonl", "split": {"val": 0.25}}))
    result = runner.invoke(app, ["data", "check", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = _wide(result.output)
    assert f"id gone: file not found [{missing}]" in shown
    assert f"id odd: file not found [{odd_image}]" in shown
    assert f"{pos} 3 (50%)" in shown and f"{neg} 3 (50%)" in shown and "data usable" in shown  # train labels


def test_check_says_how_to_follow_a_symlink_out_of_the_root(
    tmp_path: Path, write_image: Callable, write_jsonl: Callable
) -> None:
    root, elsewhere = tmp_path / "ds", tmp_path / "disk" / "images"
    rows = [{"id": i, "text": "t", "image": f"img/{i}.png", "label": i % 2} for i in range(8)]
    for row in rows:
        write_image(elsewhere / f"{row['id']}.png")
    write_jsonl(root / "train.jsonl", rows)
    (root / "img").symlink_to(elsewhere, target_is_directory=True)
    config = root / "data.yaml"
    config.write_text(yaml.safe_dump({"root": ".", "train": "train.jsonl", "split": {"val": 0.25}}))
    result = runner.invoke(app, ["data", "check", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 1  # no example left
    shown = _wide(result.output)
    assert f"outside the dataset root through the symlink 'img' -> '{elsewhere}'" in shown
    assert "set allow_outside_root: true in the data config to follow it" in shown
    config.write_text(yaml.safe_dump({"root": ".", "train": "train.jsonl", "split": {"val": 0.25},
                                      "allow_outside_root": True}))  # fmt: skip
    result = runner.invoke(app, ["data", "check", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["splits"]["train"]["examples"] == 6
