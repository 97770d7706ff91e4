"""Sweeps on one CLIP checkpoint's two towers (``model.encoder``): the ``zero_shot`` baseline beside the others, with
the numbers ``evaluate`` shows for it beside a model on those towers (a tiny random CLIP saved with
``save_pretrained``). Sweeps on other encoders have no such row (tests/sweep/test_sweep_heads.py, test_sweep_run.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from _tiny_text import tiny_text_dir
from mmfuse import MultimodalClassifier
from mmfuse.data import load_splits
from mmfuse.data.config import DataConfig
from mmfuse.sweep import run_sweep, sweep_from_dict, sweep_table

PROMPTS = {"0": "a harmless meme", "1": "a hateful meme"}


@pytest.fixture(scope="module")
def towers_base(synth_root: Path) -> dict[str, Any]:
    return {
        "data": {"root": str(synth_root), "preset": "hateful_memes"},
        "model": {"encoder": str(tiny_text_dir("clip")), "zero_shot_prompts": PROMPTS, "head": "align"},
        "train": {"epochs": 1, "batch_size": 16},
    }


def _test_split(synth_root: Path) -> Any:
    return load_splits(DataConfig(root=synth_root, preset="hateful_memes"))


def test_a_sweep_of_one_head_trains_the_zero_shot_baseline_beside_the_unimodal_ones(towers_base, synth_root, tmp_path):
    spec = {"name": "towers", "base": copy.deepcopy(towers_base), "grid": {"lr": [1e-3]}}
    sweep = sweep_from_dict(spec)
    assert sweep.baselines["zero_shot"] == {"head.name": "zero_shot", "head.params": {"prompts": PROMPTS}}
    assert set(sweep.baselines) == {"text_only", "image_only", "zero_shot"}
    lines: list[str] = []
    result = run_sweep(sweep, out=tmp_path / "towers", log=lines.append)
    table, info = sweep_table(result.folder)
    assert "trial 2 started: baseline zero_shot" in lines
    row = table.set_index("baseline").loc["zero_shot"]
    trial = table[table["baseline"] == ""].iloc[0]
    splits = _test_split(synth_root)
    shown = MultimodalClassifier.load(result.folder / trial["run_dir"]).evaluate(splits["val"])
    assert row[f"val_{info['metric']}"] == shown["baselines"]["zero_shot"][info["metric"]]
    md = (result.folder / "trials.md").read_text()
    assert any(x.startswith("Baselines (the base config") and "zero_shot 0." in x for x in md.splitlines())


def test_a_sweep_comparing_heads_shows_the_zero_shot_row_with_evaluates_numbers(towers_base, synth_root, tmp_path):
    spec = {"name": "heads", "base": copy.deepcopy(towers_base), "grid": {"lr": [1e-3]}, "heads": ["align"]}
    result = run_sweep(sweep_from_dict(spec), out=tmp_path / "heads", log=lambda _: None)
    metric = result.metric
    board = pd.read_csv(result.folder / "heads.csv").set_index("head")
    assert set(board.index) == {"align", "zero_shot"} and board.loc["zero_shot", "note"] == "no training"
    selected = json.loads((result.folder / "heads" / "align" / "selected.json").read_text())
    clf = MultimodalClassifier.load(result.folder / "heads" / "align" / selected["run_dir"])
    splits = _test_split(synth_root)
    for split in ("val", "test"):
        shown = clf.evaluate(splits[split])["baselines"]["zero_shot"][metric]
        # heads.csv holds each float's shortest repr, which reads back to the same float64
        assert board.loc["zero_shot", f"{split}_{metric}"] == shown
    assert "zero_shot" in (result.folder / "heads.md").read_text()
    again = run_sweep(sweep_from_dict(spec), out=tmp_path / "heads", log=lambda _: None)
    assert again.ran == []  # the row is read back, not fitted again
    spec["baselines"] = False
    none = run_sweep(sweep_from_dict(spec), out=tmp_path / "none", log=lambda _: None)
    assert "zero_shot" not in set(pd.read_csv(none.folder / "heads.csv")["head"])
