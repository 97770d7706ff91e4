"""Registries and builders: names, folders, hub ids, options, and the one-line errors when a name leads nowhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import huggingface_hub.constants
import pytest

from _tiny import (
    ENCODER_KINDS,
    TINY_ENCODER_KINDS,
    make_encoders,
    tiny_bert_dir,
    tiny_clip_vision_dir,
    tiny_image_encoder,
    tiny_resnet_dir,
    tiny_text_encoder,
)
from mmfuse._registry import UnknownNameError
from mmfuse.encoders import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    CLIPVisionEncoder,
    EncoderLoadError,
    HFResNetEncoder,
    HFTextEncoder,
    ImageEncoder,
    TextEncoder,
    build_image_encoder,
    build_text_encoder,
    encoder_options,
)


@pytest.fixture
def offline(monkeypatch):
    """Hub access off, as on a machine without internet (huggingface_hub reads the variable at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_registered_names():
    assert {"minilm", "bert-base-uncased"} <= set(TEXT_ENCODERS.names())
    assert {"efficientnet-lite0", "clip-vit-b32", "resnet-18"} <= set(IMAGE_ENCODERS.names())
    assert TEXT_ENCODERS.get("minilm").defaults == {"pooling": "mean"}
    assert IMAGE_ENCODERS.get("clip-vit-b32").source == "openai/clip-vit-base-patch32"
    assert IMAGE_ENCODERS.get("resnet-18").source == "microsoft/resnet-18"


def test_folders_dispatch_on_model_type():
    assert type(build_text_encoder(str(tiny_bert_dir()))) is HFTextEncoder
    assert type(build_image_encoder(str(tiny_clip_vision_dir()))) is CLIPVisionEncoder
    assert type(build_image_encoder(str(tiny_resnet_dir()))) is HFResNetEncoder


@pytest.mark.parametrize(("build", "name"), [(build_text_encoder, "minlm"), (build_image_encoder, "efficientnet")])
def test_unknown_name_lists_known(build, name):
    with pytest.raises(UnknownNameError) as info:
        build(name)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and repr(name) in msg
    known = TEXT_ENCODERS.names() if build is build_text_encoder else IMAGE_ENCODERS.names()
    assert all(k in msg for k in known) and "org/name" in msg and "folder" in msg


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "~/no/such/model"])
def test_missing_folder(name):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        build_text_encoder(name)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (build_text_encoder, "no-such-org/no-such-model"),
        (build_image_encoder, "no-such-org/no-such-vision-model"),
        (build_text_encoder, "bert-base-uncased"),
        (build_image_encoder, "clip-vit-b32"),
        (build_image_encoder, "resnet-18"),
    ],
)
def test_unreachable_hub_model_is_one_clear_error(offline, build, name):
    error: EncoderLoadError | None = None
    try:
        build(name)
    except EncoderLoadError as exc:
        error = exc
    if error is None:
        pytest.skip(f"{name} is in the local Hugging Face cache")
    msg = str(error)
    assert "\n" not in msg and len(msg) < 700
    assert "internet" in msg and "save_pretrained" in msg and "HF_HUB_OFFLINE" in msg
    assert error.__cause__ is None and error.__suppress_context__  # no chained hub-client traceback


def test_folder_without_a_model(tmp_path):
    with pytest.raises(EncoderLoadError, match="from folder") as info:
        build_text_encoder(str(tmp_path))
    assert "\n" not in str(info.value) and "save_pretrained" in str(info.value)


def test_folder_with_weights_that_do_not_fit(tmp_path):
    shutil.copytree(tiny_bert_dir(), tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 48  # weights saved with 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderLoadError, match="could not load the text model from folder"):
        build_text_encoder(str(tmp_path))


def test_modalities_are_not_mixed():
    with pytest.raises(ValueError, match="build_image_encoder"):
        build_text_encoder("efficientnet-lite0")
    with pytest.raises(ValueError, match="build_text_encoder"):
        build_image_encoder("minilm")
    with pytest.raises(ValueError, match=r"'bert'.*text model"):
        build_image_encoder(str(tiny_bert_dir()))
    with pytest.raises(ValueError, match=r"'clip_vision_model'.*image model"):
        build_text_encoder(str(tiny_clip_vision_dir()))


def test_unknown_option_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['poolng'\].*pooling='cls'.*max_length=128"):
        tiny_text_encoder(poolng="mean")
    with pytest.raises(ValueError, match=r"pooling='mean'"):  # the registered name's own defaults are listed
        build_text_encoder("minilm", bad=1)
    with pytest.raises(ValueError, match=r"\['image_size'\].*\(none\)"):
        tiny_image_encoder("clip", image_size=64)
    with pytest.raises(ValueError, match=r"image_size=224.*resize='stretch'"):
        build_image_encoder("efficientnet-lite0", imagesize=64)


def test_bad_option_values():
    with pytest.raises(ValueError, match="resize"):
        build_image_encoder("efficientnet-lite0", resize="pad")
    with pytest.raises(ValueError, match="image_size"):
        build_image_encoder("efficientnet-lite0", image_size=8)


def test_encoder_options():
    assert encoder_options(HFTextEncoder) == {"pooling": "cls", "max_length": 128}
    assert encoder_options(CLIPVisionEncoder) == {}


@pytest.mark.parametrize("name", [None, "", 3])
def test_name_must_be_a_string(name):
    with pytest.raises(ValueError, match="non-empty string"):
        build_text_encoder(name)


def test_encoders_import_alone():
    """The encoders import without the engine, the CLI or the server, and without transformers' modeling code
    (loaded when a model is built)."""
    code = (
        "import sys, mmfuse.encoders\n"
        "bad = [m for m in sys.modules if m.startswith(('mmfuse.engine', 'mmfuse.cli', 'mmfuse.serve', "
        "'mmfuse.fusion', 'transformers.models', 'torchvision'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- tests/_tiny.py, the shared helper ---


@pytest.mark.parametrize("kind", TINY_ENCODER_KINDS)
def test_make_encoders_gives_fresh_pairs(kind):
    text, image = make_encoders(kind)
    again, image_again = make_encoders(kind)
    assert isinstance(text, TextEncoder) and isinstance(image, ImageEncoder) and text.supports_joint_encoding
    assert text is not again and image is not image_again
    assert all(p is not q for p, q in zip(text.parameters(), again.parameters(), strict=True))
    assert text.cache_identity() == again.cache_identity()
    assert not text.is_frozen and not image.is_frozen


def test_tiny_helpers():
    assert tiny_bert_dir() == tiny_bert_dir()  # made once per process
    assert set(TINY_ENCODER_KINDS) < set(ENCODER_KINDS) and "minilm+efficientnet-lite0" in ENCODER_KINDS
    with pytest.raises(ValueError, match="known"):
        make_encoders("bert+vgg")
    with pytest.raises(ValueError, match="known"):
        tiny_image_encoder("vgg")
