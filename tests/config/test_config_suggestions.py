"""Unknown keys and names get a "did you mean": in key=value overrides, YAML files and keyword shortcuts, for fusion
head and encoder names, head hyperparameters and encoder options. Every message keeps naming the key path and the
allowed values (pinned in test_config_overrides.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmfuse import MultimodalClassifier
from mmfuse._registry import UnknownNameError
from mmfuse.config import ConfigError, config_from, load_config
from mmfuse.encoders import build_image_encoder, build_text_encoder
from mmfuse.fusion import build_head


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("epoch=3", ["unknown override key 'epoch'; a key is a dotted path", "did you mean train.epochs?"]),
        ("dropout=0.2", ["did you mean model.head.params.dropout or train.image_dropout?"]),  # a leaf elsewhere
        ("pooling=cls", ["did you mean model.text_encoder.options.pooling?"]),
        ("trainer.epochs=1", ["unknown override key 'trainer.epochs'", "did you mean train.epochs?"]),
        ("batchsize=8", ["did you mean train.batch_size"]),
        ("train.epoch=3", ["train: unknown key(s) 'epoch'; allowed keys: epochs", "did you mean 'epochs'?"]),
        ("head.name=cross_atention", ["model.head.name: unknown fusion head", "did you mean 'cross_attention'?"]),
        ("head.params.dropuot=0.2", ["'dropuot' in params of head 'concat'", "did you mean 'dropout'?"]),
        ("data.colums.text=t", ["data: unknown key(s) 'colums'", "did you mean 'columns'?"]),
    ],
)
def test_overrides(override: str, expected: list[str]) -> None:
    message = error_of(load_config, None, [override])
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "epochs: 3\n",
            ["(top level): unknown key(s) 'epochs'", "epochs is not a setting; did you mean train.epochs?"],
        ),
        ("train: {lr: 0.1}\n", ["train.lr is not a setting; did you mean optim.lr"]),
        (
            "model: {head: {name: concat, dropout: 0.2}}\n",
            ["model.head.dropout is not a setting; did you mean model.head.params.dropout"],
        ),
        ("train: {epoch: 3}\n", ["train: unknown key(s) 'epoch'", "did you mean 'epochs'?"]),
        ("model: {head: {name: concatt}}\n", ["unknown fusion head 'concatt'; known: ", "did you mean 'concat'?"]),
    ],
)
def test_yaml_files(tmp_path: Path, yaml_text: str, expected: list[str]) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    message = error_of(load_config, path)
    assert f"invalid config in {str(path)!r}" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_a_close_name_in_its_own_section_is_suggested_once(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {epoch: 3}\n", encoding="utf-8")
    assert error_of(load_config, path).count("did you mean") == 1


def test_shortcuts() -> None:
    assert "did you mean train.epochs?" in error_of(config_from, epoch=3)
    assert "did you mean train.epochs?" in error_of(MultimodalClassifier, epoch=3)
    assert "did you mean model.head.params.dropout" in error_of(MultimodalClassifier, dropout=0.2)
    assert "did you mean 'cross_attention'?" in error_of(config_from, head="cross_atention")
    assert "did you mean model.head.params.hidden?" in error_of(config_from, {"model": {"head": {"hiden": 8}}})


def test_no_suggestion_when_nothing_is_close() -> None:
    message = error_of(load_config, None, ["zzzz=1"])
    assert "unknown override key 'zzzz'" in message and "did you mean" not in message


def test_registry_names() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown fusion head 'concatt'; known: .*; did you mean 'concat'\?"):
        build_head("concatt", text_encoder=None, image_encoder=None, num_classes=2)
    with pytest.raises(UnknownNameError, match=r"unknown text encoder 'minlm'; known: .*did you mean 'minilm'\?"):
        build_text_encoder("minlm")
    with pytest.raises(UnknownNameError, match=r"did you mean .*'efficientnet-lite0'"):
        build_image_encoder("efficientnet-lite")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['imagesize'\].*did you mean 'image_size'\?"):
        build_image_encoder("efficientnet-lite0", imagesize=112)
