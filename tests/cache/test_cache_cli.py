"""`mmfuse cache ls / clear` through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
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
    assert accepted.exit_code == 0 and "cleared 2 encoder folder(s) and 0 ONNX export(s)" in accepted.output
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


@pytest.fixture
def with_export(tmp_path: Path, examples: list[Example], text_encoder: Encoder, image_encoder: Encoder) -> Path:
    """A cache whose image features were computed on onnxruntime: its export sits in the cache's ``onnx/``."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (extra `export`)")
    cache = FeatureCache(tmp_path / "c", encode_workers=0)
    cache.get(text_encoder, examples[:6], need_sequence=False)
    image_encoder.backend = "onnxruntime"
    try:
        cache.get(image_encoder, examples[:6], need_sequence=False)
    finally:
        image_encoder.backend = "auto"
    return tmp_path / "c"


def test_ls_shows_each_onnx_export_with_its_encoder(with_export: Path, image_encoder: Encoder) -> None:
    """The export is named after the encoder it came from: the name ``mmfuse.features.compute`` gives it (torch
    imported) is the one ``cache ls`` attributes without importing torch."""
    from mmfuse.cache.location import onnx_dir
    from mmfuse.features.compute import onnx_file

    listing = _ls_json(with_export)
    (export,) = listing["onnx_exports"]
    expected = onnx_file(image_encoder, onnx_dir(with_export))
    image = next(e for e in listing["encoders"] if e["modality"] == "image")
    assert export["path"] == str(expected) and export["bytes"] == expected.stat().st_size > 0
    assert export["name"] == image["name"] and export["identity_sha256"] == image["identity_sha256"]
    assert export["modality"] == "image" and not export["partial"]
    # its check against torch is recorded beside it (a later process skips the check) and listed with it
    assert export["check_record"] == str(expected) + ".checked.json" and Path(export["check_record"]).is_file()

    plain = runner.invoke(app, ["cache", "ls", "--cache-dir", str(with_export)])
    assert plain.exit_code == 0, plain.output
    assert "2 encoder folder(s) and 1 ONNX export(s)" in plain.output
    assert f"ONNX export (backend onnxruntime): onnx/{expected.name}" in plain.output
    assert "(checked against torch)" in plain.output


def test_clear_one_encoder_takes_its_onnx_export(with_export: Path) -> None:
    encoders = {e["modality"]: e for e in _ls_json(with_export)["encoders"]}
    text = runner.invoke(
        app, ["cache", "clear", "--cache-dir", str(with_export), "--encoder", encoders["text"]["name"], "-y"]
    )
    assert text.exit_code == 0, text.output
    assert "1 encoder folder(s) and 0 ONNX export(s)" in text.output
    assert len(_ls_json(with_export)["onnx_exports"]) == 1  # the image encoder's export stays with its features
    image = runner.invoke(
        app, ["cache", "clear", "--cache-dir", str(with_export), "--encoder", encoders["image"]["name"], "-y"]
    )
    assert image.exit_code == 0, image.output
    assert "1 encoder folder(s) and 1 ONNX export(s)" in image.output and ".onnx (" in image.output
    assert _ls_json(with_export) == {"cache_dir": str(with_export), "encoders": [], "onnx_exports": []}


def test_exports_without_features_are_listed_and_cleared(with_export: Path) -> None:
    """Exports no encoder folder claims (features cleared by an older mmfuse, another torch version's file, a
    half-written temporary of a killed export) are shown as such, and `cache clear` removes them rather than
    calling the cache empty."""
    from mmfuse.cache.location import features_dir, onnx_dir

    shutil.rmtree(features_dir(with_export))
    (onnx_dir(with_export) / "0123abcd.onnx.x1y2.tmp").write_bytes(b"half")
    (onnx_dir(with_export) / "notes.txt").write_text("a user's file")
    listing = _ls_json(with_export)
    assert listing["encoders"] == [] and len(listing["onnx_exports"]) == 3
    assert all(e["name"] is None for e in listing["onnx_exports"])
    assert sorted(e["partial"] for e in listing["onnx_exports"]) == [False, False, True]
    plain = runner.invoke(app, ["cache", "ls", "--cache-dir", str(with_export)])
    assert "3 ONNX export(s) of no cached encoder" in plain.output and "half-written" in plain.output
    assert "notes.txt (not an ONNX export)" in plain.output and "another torch version made it" in plain.output

    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(with_export)], input="y\n")
    assert cleared.exit_code == 0, cleared.output
    assert "0 encoder folder(s) and 3 ONNX export(s)" in cleared.output
    assert not onnx_dir(with_export).exists()
    empty = runner.invoke(app, ["cache", "ls", "--cache-dir", str(with_export)])
    assert "is empty" in empty.output
