"""`mmfuse cache ls / clear` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmfuse.cache import FeatureCache
from mmfuse.cli import app
from mmfuse.data import Example
from mmfuse.encoders import Encoder

runner = CliRunner()


@pytest.fixture
def filled(tmp_path: Path, examples: list[Example], text_encoder: Encoder, image_encoder: Encoder) -> Path:
    cache = FeatureCache(tmp_path / "c", encode_workers=0, store_sequences=False)  # image entries: pooled only
    cache.get(text_encoder, examples, need_sequence=True)
    cache.get(image_encoder, examples[:10], need_sequence=False)
    return tmp_path / "c"


def _ls_json(root: Path) -> dict:
    result = runner.invoke(app, ["cache", "ls", "--cache-dir", str(root), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_ls_lists_encoders_inputs_sizes_and_datasets(filled: Path, examples: list[Example]) -> None:
    listing = _ls_json(filled)
    assert listing["cache_dir"] == str(filled)
    by_modality = {e["modality"]: e for e in listing["encoders"]}
    text, image = by_modality["text"], by_modality["image"]
    assert text["encoder_class"] == "HFTextEncoder" and image["encoder_class"] == "HFResNetEncoder"
    assert text["entries"] == text["sequence_entries"] == len({e.text for e in examples})
    assert image["entries"] == 10 and image["sequence_entries"] == 0
    assert text["bytes"] > image["bytes"] > 0
    assert image["datasets"][0]["dataset"].endswith("img") and image["datasets"][0]["examples"] == 10
    assert text["identity"]["weights"] and text["unusable"] == 0

    plain = runner.invoke(app, ["cache", "ls", "--cache-dir", str(filled)])
    assert plain.exit_code == 0, plain.output
    assert f"[text, HFTextEncoder]  identity {text['identity_sha256'][:12]}" in plain.output
    assert f"{text['entries']} inputs ({text['entries']} with sequence/grid)" in plain.output
    assert "10 inputs (0 with sequence/grid)" in plain.output and "KiB" in plain.output
    assert "img: 10 examples asked for (pooled)" in plain.output


def test_ls_of_an_empty_or_missing_cache(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cache", "ls", "--cache-dir", str(tmp_path / "none")])
    assert result.exit_code == 0 and "is empty" in result.output


def test_ls_uses_the_environment_folder(filled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMFUSE_CACHE_DIR", str(filled))
    result = runner.invoke(app, ["cache", "ls", "--json"])
    assert result.exit_code == 0 and len(json.loads(result.output)["encoders"]) == 2


def test_clear_one_encoder_by_name_or_hash(filled: Path) -> None:
    encoders = {e["modality"]: e for e in _ls_json(filled)["encoders"]}
    name = encoders["text"]["name"]
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", str(filled), "--encoder", name, "-y"])
    assert result.exit_code == 0, result.output
    assert [e["modality"] for e in _ls_json(filled)["encoders"]] == ["image"]
    prefix = encoders["image"]["identity_sha256"][:8]
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", str(filled), "--encoder", prefix, "--yes"])
    assert result.exit_code == 0 and "removed" in result.output
    assert _ls_json(filled)["encoders"] == []


def test_clear_all_asks_first(filled: Path) -> None:
    declined = runner.invoke(app, ["cache", "clear", "--cache-dir", str(filled)], input="n\n")
    assert declined.exit_code == 1 and len(_ls_json(filled)["encoders"]) == 2
    accepted = runner.invoke(app, ["cache", "clear", "--cache-dir", str(filled)], input="y\n")
    assert accepted.exit_code == 0 and "cleared 2 encoder folder(s)" in accepted.output
    assert _ls_json(filled)["encoders"] == []


def test_clear_an_unknown_encoder_names_what_is_cached(filled: Path) -> None:
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", str(filled), "--encoder", "nope", "-y"])
    assert result.exit_code == 2
    assert "no cached encoder 'nope'" in result.output and "HF" not in result.output
    assert "tiny-bert" in result.output and "mmfuse cache ls" in result.output


def test_an_off_or_file_cache_dir_is_refused(tmp_path: Path) -> None:
    assert runner.invoke(app, ["cache", "ls", "--cache-dir", "off"]).exit_code == 2
    file = tmp_path / "f"
    file.write_text("x")
    result = runner.invoke(app, ["cache", "ls", "--cache-dir", str(file)])
    assert result.exit_code == 2 and "is a file" in result.output
