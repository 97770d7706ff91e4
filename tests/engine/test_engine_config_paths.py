"""Where a relative data.root points, and ``python -m mmfuse``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmfuse.config import ConfigError, load_config


def test_relative_root_in_yaml_is_relative_to_the_file_and_on_the_command_line_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "configs").mkdir()
    cfg = tmp_path / "configs" / "c.yaml"
    cfg.write_text("data: {root: data, preset: hateful_memes}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg).data.root == tmp_path / "configs" / "data"
    assert load_config(cfg, ["data.root=elsewhere"]).data.root == tmp_path / "elsewhere"
    assert load_config(cfg, ["data.root=/abs/data"]).data.root == Path("/abs/data")


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "mmfuse", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in ("train", "evaluate", "predict", "demo"):
        assert command in out.stdout


def test_train_threads_sets_torch_threads(tmp_path: Path, fake_encoders: None, synthetic_splits: dict) -> None:
    import torch
    from _engine_support import make_config

    from mmfuse.engine.classifier import MultimodalClassifier

    before = torch.get_num_threads()
    try:
        cfg = make_config(tmp_path / "data", tmp_path / "runs", train={"epochs": 1, "threads": 1})
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads"):
        make_config(tmp_path / "data", tmp_path / "runs", train={"threads": 0})
