"""Fixtures of the report tests: small synthetic datasets (one caption carries markup), trained tiny runs, a sweep."""

from __future__ import annotations

import copy
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from mmfuse.data import make_synthetic

HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & "quotes"'
"""A caption that would run code if the report did not escape it."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (see tests/conftest.py)."""


def _rewrite(path: Path, change: Any) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    path.write_text("".join(json.dumps(change(i, row)) + "\n" for i, row in enumerate(rows)))


@pytest.fixture(scope="session")
def binary_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 synthetic examples; the first validation caption is hostile markup."""
    root = make_synthetic(tmp_path_factory.mktemp("report-data") / "binary", n=80, seed=1)
    _rewrite(root / "dev.jsonl", lambda i, row: {**row, "text": HOSTILE} if i == 0 else row)
    return root


@pytest.fixture(scope="session")
def three_class_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 synthetic examples relabelled into three classes (a, b, c)."""
    root = make_synthetic(tmp_path_factory.mktemp("report-data") / "three", n=80, seed=2)
    for name in ("train", "dev", "test"):
        _rewrite(
            root / f"{name}.jsonl", lambda i, row: {**row, "label": "abc"[zlib.crc32(str(row["id"]).encode()) % 3]}
        )
    return root


def config(root: Path, head: str = "cross_attention", **train: Any) -> dict[str, Any]:
    """A tiny training config on ``root``."""
    return {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": {
            "text_encoder": str(tiny_bert_dir()),
            "image_encoder": str(tiny_clip_vision_dir()),
            "head": {"name": head, "params": {"hidden": 32}},
        },
        "train": {"epochs": 3, "batch_size": 16, **train},
        "run": {"quiet": True},
    }


def _train(data: dict[str, Any], out: Path, name: str) -> Path:
    from mmfuse.config import validate_config
    from mmfuse.engine.classifier import MultimodalClassifier

    data = copy.deepcopy(data)
    data["run"].update(out_dir=str(out), name=name)
    clf = MultimodalClassifier(validate_config(data)).fit()
    assert clf.run_dir is not None
    return clf.run_dir.path


@pytest.fixture(scope="session")
def binary_run(binary_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained cross-attention run (attention maps and image reliance) on the binary data."""
    return _train(config(binary_root), tmp_path_factory.mktemp("report-runs"), "binary")


@pytest.fixture(scope="session")
def three_class_run(three_class_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained concat run (no attention) on the three-class data."""
    return _train(config(three_class_root, head="concat"), tmp_path_factory.mktemp("report-runs"), "three")


@pytest.fixture(scope="session")
def small_sweep(binary_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-point grid (lr x dropout) and its unimodal baselines, with an ensemble of its best 3 trials in
    ``<sweep>/ensemble``."""
    from mmfuse.sweep import build_ensemble, run_sweep, sweep_from_dict

    base = config(binary_root, head="concat", epochs=2)
    base.pop("run")
    spec = {"name": "report", "base": base, "grid": {"lr": [3e-3, 3e-4], "head.params.dropout": [0.0, 0.3]}}
    result = run_sweep(sweep_from_dict(spec), out=tmp_path_factory.mktemp("report-sweep") / "s", log=lambda _: None)
    build_ensemble(result.folder, top_k=3, rounds=5)
    return result.folder


@pytest.fixture(scope="session")
def hostile() -> str:
    """The hostile caption of the first validation example of ``binary_root``."""
    return HOSTILE
