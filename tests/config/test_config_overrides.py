"""The training config: YAML + overrides, and every error path naming the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse.config import ConfigError, TrainConfig, config_from, load_config, resolve_key, validate_config

BASE = """
data:
  root: data
  preset: hateful_memes
model:
  head: {name: concat, params: {hidden: 0}}
optim:
  lr: 1e-4
"""


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(BASE, encoding="utf-8")
    return path


def errors_of(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def test_yaml_and_overrides(cfg_file: Path) -> None:
    cfg = load_config(cfg_file, ["head.name=cross_attention", "train.epochs=3", "model.head.params={}", "lr=2e-3"])
    assert cfg.optim.lr == 2e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.model.head.name == "cross_attention" and cfg.model.head.params == {}
    assert cfg.train.epochs == 3
    assert cfg.data.root == cfg_file.parent / "data"  # relative to the YAML file's folder
    assert load_config(cfg_file).optim.lr == 1e-4  # YAML 1e-4 is a float, not a string


def test_override_values_are_yaml(cfg_file: Path) -> None:
    cfg = load_config(
        cfg_file, ["train.class_weights=[1, 2.5]", "model.image_encoder=null", "head.name=text_only", "run.quiet=true"]
    )
    assert cfg.train.class_weights == [1.0, 2.5]
    assert cfg.model.image_encoder is None
    assert cfg.run.quiet is True
    cfg = load_config(cfg_file, ["model.text_encoder.options.max_length=32", "model.head.params.dropout=0"])
    assert cfg.model.text_encoder.options == {"max_length": 32}
    assert cfg.model.head.params == {"hidden": 0, "dropout": 0}


def test_round_trip(cfg_file: Path, tmp_path: Path) -> None:
    cfg = load_config(cfg_file, ["train.class_weights=balanced"])
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml(), encoding="utf-8")
    assert load_config(again) == cfg


def test_short_keys() -> None:
    assert resolve_key("head.name") == ("model", "head", "name")
    assert resolve_key("lr") == ("optim", "lr")
    assert resolve_key("epochs") == ("train", "epochs")
    assert resolve_key("head.params.hidden") == ("model", "head", "params", "hidden")
    assert resolve_key("model.head.name") == ("model", "head", "name")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.name=adamx", ["optim.name", "'adam', 'adamw' or 'sgd'", "adamx"]),
        ("optim.schedule=step", ["optim.schedule", "'constant', 'linear' or 'cosine'"]),
        ("train.mixed_precision=fp8", ["train.mixed_precision", "'no', 'fp16', 'bf16' or 'auto'"]),
        ("train.selection_metric=f2", ["train.selection_metric", "'macro_f1'", "'auroc'"]),
        ("optim.lr=-1", ["optim.lr", "greater than 0"]),
        ("optim.grad_accum=0", ["optim.grad_accum", "greater than or equal to 1"]),
        ("train.epochs=many", ["train.epochs", "integer"]),
        ("train.class_weights=heavy", ["train.class_weights", "'none', 'balanced' or a list"]),
        ("train.class_weights=[1, x]", ["train.class_weights", "numbers >= 0"]),
        ("model.head.nme=x", ["model.head", "unknown key(s) 'nme'", "allowed keys: name, params"]),
        ("optim.learning_rate=1", ["optim", "'learning_rate'", "allowed keys: name, lr, encoder_lr"]),
        ("trainer.epochs=1", ["unknown override key 'trainer.epochs'", "data, model, optim, train, run, cache"]),
        ("head.name=nope", ["model.head.name", "unknown fusion head 'nope'", "concat", "early_fusion"]),
        ("head.params.bogus=1", ["model.head", "'bogus'", "hidden=256", "dropout=0.1"]),
        ("head.params.hidden=wide", ["model.head", "params.hidden", "number"]),
        ("head.params.normalize=3", ["model.head", "params.normalize", "true or false"]),
        ("model.text_encoder=null", ["model", "reads the text", "model.text_encoder.name"]),
        ("model.text_encoder.freez=false", ["model.text_encoder", "'freez'", "freeze"]),
        ("model.text_encoder.trainable_top_k=-1", ["model.text_encoder.trainable_top_k", "greater than or equal"]),
        ("run.name=a/b", ["run.name", "no slashes"]),
        ("data.format=xml", ["data.format", "'auto', 'jsonl', 'csv' or 'parquet'"]),
        ("data.on_missing_image=ignore", ["data.on_missing_image", "'skip', 'blank' or 'error'"]),
    ],
)
def test_bad_values_name_the_key_and_the_allowed(cfg_file: Path, override: str, expected: list[str]) -> None:
    message = errors_of(cfg_file, override)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_every_error_is_reported_at_once(cfg_file: Path) -> None:
    message = errors_of(cfg_file, "optim.lr=0", "train.mixed_precision=x", "train.batch_size=0")
    assert "optim.lr" in message and "train.mixed_precision" in message and "train.batch_size" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr", "must be key=value"),
        ("=3", "must be key=value"),
        ("optim..lr=1", "empty part"),
        ("seed=3", "ambiguous"),
        ("name=x", "ambiguous"),
        ("foo=1", "unknown override key 'foo'"),
        ("optim.lr.x=1", "optim.lr is"),
    ],
)
def test_bad_override_keys(cfg_file: Path, override: str, expected: str) -> None:
    message = errors_of(cfg_file, override)
    assert expected in message
    if "ambiguous" in expected:
        assert "train.seed" in message or "run.name" in message  # lists the candidates


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_defaults_and_shortcuts() -> None:
    cfg = TrainConfig()
    assert cfg.model.text_encoder.name == "minilm" and cfg.model.image_encoder.name == "efficientnet-lite0"
    assert cfg.model.head.name == "concat" and cfg.data is None
    cfg = config_from(head="align", text_encoder="bert-base-uncased", epochs=2, lr=5e-4)
    assert cfg.model.head.name == "align" and cfg.model.text_encoder.name == "bert-base-uncased"
    assert cfg.model.text_encoder.freeze is True  # setting the name keeps the section's other fields
    assert (cfg.train.epochs, cfg.optim.lr) == (2, 5e-4)
    with pytest.raises(ConfigError, match="ambiguous"):
        config_from(seed=1)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        config_from(epochs=0)


def test_validate_config_rejects_unknown_sections() -> None:
    with pytest.raises(ConfigError, match="allowed keys: data, model, optim, train, run, cache"):
        validate_config({"optimizer": {}})
