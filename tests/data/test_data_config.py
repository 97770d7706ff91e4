"""DataConfig validation, presets, and YAML loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mmfuse.data import PRESETS, DataConfig, load_data_config


def test_presets_fill_unset_fields_and_merge_columns() -> None:
    cfg = DataConfig(root="x", preset="multioff", columns={"text": "caption"})
    assert cfg.train == "Split Dataset/Training_meme_dataset.csv"
    assert cfg.columns.text == "caption" and cfg.columns.image == "image_name"
    assert cfg.label_map is not None and cfg.label_map["Non-offensiv"] == "non-offensive"
    overridden = DataConfig(root="x", preset="hateful_memes", test=None, val="other.jsonl")
    assert overridden.test is None and overridden.val == "other.jsonl" and overridden.train == "train.jsonl"


@pytest.mark.parametrize("name", PRESETS.names())
def test_every_preset_is_a_valid_config(name: str) -> None:
    assert set(PRESETS.get(name)) <= set(DataConfig.model_fields)
    DataConfig(root="x", preset=name)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preset": "memes"}, "unknown data preset 'memes'; known: hateful_memes, multioff, mvsa_single"),
        ({"train": "t.jsonl", "colums": {}}, "unknown key(s) 'colums'; allowed keys: root, preset"),
        ({"train": "t.jsonl", "columns": {"txt": "a"}}, "allowed keys: id, text, image, label"),
        ({"train": "t.jsonl", "on_bad_row": "ignore"}, "'error' or 'skip'"),
        ({"train": "t.jsonl", "on_missing_image": "drop"}, "'skip', 'blank' or 'error'"),
        ({"train": "t.jsonl", "format": "xml"}, "'auto', 'jsonl', 'csv' or 'parquet'"),
        ({"train": "t.jsonl", "text_file": "{name}.txt"}, "unknown placeholder(s) ['name']; allowed: {id}, {image}"),
        ({"train": "t.jsonl", "split": {"val": 1.5}}, "split.val must be a fraction in [0, 1)"),
        ({"train": "t.jsonl", "split": {"val": 0.5, "test": 0.5}}, "must leave examples for train"),
        ({"train": "t.jsonl", "delimiter": "::"}, "delimiter must be one character"),
        ({"train": "t.jsonl", "fallback_encodings": ["klingon"]}, "unknown encoding 'klingon'"),
        ({"train": "t.jsonl", "max_image_pixels": 0}, "max_image_pixels must be positive"),
        ({"train": "t.jsonl", "columns": {"text": None}}, "no text source"),
        ({"train": "t.jsonl", "columns": {"image": None}, "image_template": "{image}.png"}, "columns.image is not set"),
    ],
)
def test_wrong_keys_and_values_are_named(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DataConfig.model_validate({"root": "x", **fields})
    assert message in str(exc.value)


def test_yaml_top_level_or_data_section_with_relative_root(tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "flat.yaml").write_text(yaml.safe_dump({"root": "../ds", "preset": "hateful_memes"}))
    (folder / "full.yaml").write_text(
        yaml.safe_dump({"data": {"root": "../ds", "preset": "mvsa_single"}, "model": {"head": "concat"}})
    )
    flat = load_data_config(folder / "flat.yaml")
    assert flat.root == folder / "../ds" and flat.resolved_root() == (tmp_path / "ds").resolve()
    full = load_data_config(folder / "full.yaml", overrides={"on_bad_row": "skip"})
    assert full.text_file == "data/{id}.txt" and full.on_bad_row == "skip"
    absolute = load_data_config({"root": "/abs/ds", "train": "t.jsonl"})
    assert absolute.root == Path("/abs/ds")


def test_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_data_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("root: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_data_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        load_data_config(tmp_path / "list.yaml")
