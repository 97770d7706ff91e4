"""Rules of the schema (:mod:`mmfuse.config.schema`) that tie settings together, and the configs that ship."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.config import ConfigError, config_from, load_config
from mmfuse.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for folder in ("examples", "benchmarks") for p in (REPO / folder).rglob("*.y*ml"))


@pytest.mark.parametrize("modality", ["text", "image"])
def test_trainable_top_k_without_freeze_is_refused(modality: str) -> None:
    key = f"model.{modality}_encoder"
    with pytest.raises(ConfigError) as info:
        config_from(**{f"{key}.freeze": False, f"{key}.trainable_top_k": 2})
    message = str(info.value)
    for part in (key, "trainable_top_k=2", "freeze is false", "set freeze=true", "or trainable_top_k=0"):
        assert part in message, f"{part!r} not in {message!r}"


def test_trainable_top_k_without_freeze_is_refused_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  text_encoder: {name: minilm, freeze: false, trainable_top_k: 1}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.text_encoder: trainable_top_k=1 .* freeze is false"):
        load_config(path)
    # either fix the message names gives a valid config
    fixed = load_config(path, ["model.text_encoder.trainable_top_k=0"]).model.text_encoder
    assert (fixed.freeze, fixed.trainable_top_k) == (False, 0)
    fixed = load_config(path, ["model.text_encoder.freeze=true"]).model.text_encoder
    assert (fixed.freeze, fixed.trainable_top_k, fixed.fully_frozen) == (True, 1, False)


def test_shipped_yaml_files_are_found() -> None:
    assert any(p.parent.name == "configs" for p in SHIPPED) and any(p.parent.name == "sweeps" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_and_sweep_loads(path: Path) -> None:
    """Every YAML config and sweep under examples/ and benchmarks/ validates against the schema (a sweep: its base
    config with every trial's overrides)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "base" in data:
        sweep = load_sweep(path)
        assert sweep.base.data is not None
    else:
        cfg = load_config(path)
        assert cfg.model.head.name
