"""The demo (the README's main command): data, one run per head, the comparison table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.engine.demo import DEMO_HEADS, HEAD_SETTINGS, demo_config, run_demo


def test_demo_writes_data_runs_and_a_table_with_every_head(tmp_path: Path, fake_encoders: None) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--n", "80", "--epochs", "1", "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    table = pd.read_csv(out / "results.csv")
    assert list(table["model"]) == [*DEMO_HEADS, "majority class"]
    assert set(table["kind"]) == {"fusion", "unimodal", "baseline"}
    assert table["test_accuracy"].between(0, 1).all()
    assert json.loads((out / "results.json").read_text())[0]["model"] == DEMO_HEADS[0]
    assert (out / "results.md").read_text().startswith("| model |")
    for head in DEMO_HEADS:
        assert (out / "runs" / head / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (out / "data" / "train.jsonl").is_file()
    assert "early_fusion" in result.output and "majority class" in result.output


def test_head_settings_apply_unless_epochs_are_given(tmp_path: Path) -> None:
    cfg = demo_config("early_fusion", tmp_path, tmp_path / "runs", epochs=20, seed=0, quiet=True)
    assert cfg.train.epochs == HEAD_SETTINGS["early_fusion"]["train"]["epochs"]
    assert cfg.model.text_encoder is not None and cfg.model.text_encoder.trainable_top_k == 2
    assert cfg.optim.encoder_lr == HEAD_SETTINGS["early_fusion"]["optim"]["encoder_lr"]
    explicit = demo_config("early_fusion", tmp_path, tmp_path / "runs", epochs=3, seed=0, quiet=True, explicit_epochs=3)
    assert explicit.train.epochs == 3
    assert demo_config("concat", tmp_path, tmp_path / "runs", epochs=20, seed=0, quiet=True).train.epochs == 20


@pytest.mark.slow
def test_demo_on_the_real_encoders_fusion_beats_each_modality(tmp_path: Path) -> None:
    """The real offline encoders on the demo's 600 synthetic examples: fusion learns the XOR, one modality cannot."""
    result = run_demo(
        tmp_path / "demo", n=600, heads=("concat", "cross_attention", "text_only", "image_only"), quiet=True
    )
    acc = dict(zip(result.table["model"], result.table["test_accuracy"], strict=True))
    assert acc["concat"] >= 0.85 and acc["cross_attention"] >= 0.85
    assert acc["text_only"] <= 0.75 and acc["image_only"] <= 0.75
