"""An encoder's preprocessing saved alone and loaded back without its weights gives exactly the encoder's own
outputs: token ids and masks for text, pixel tensors for images (the same code runs on the same settings, so the
comparison is exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import real_image_encoder, real_text_encoder, tiny_image_encoder, tiny_text_encoder
from mmfuse.encoders import ImageEncoder, PreprocessingError, load_preprocessing
from mmfuse.encoders._preprocess import PREPROCESSING_FILE, HFTokenizer, _tokenizer_hash_text

TEXTS = [
    "Hello World, a caption!",
    "",
    "naïve café, ünïcödé and an emoji 😀",
    "a very long caption " * 60,  # far past max_length: truncated
    "UPPER and lower Case",
]
TEXT_KINDS = {"tiny-bert": tiny_text_encoder, "minilm": real_text_encoder}  # MiniLM: ~2 s to load
IMAGE_KINDS = {
    "tiny-clip": lambda **o: tiny_image_encoder("clip", **o),
    "tiny-resnet": lambda **o: tiny_image_encoder("resnet", **o),
    "efficientnet-lite0": real_image_encoder,  # ~1 s to load
    "efficientnet-lite0-crop": lambda: real_image_encoder(resize="crop"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".onnx")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(50, 70), (300, 200)]]
    images.append(Image.fromarray(rng.integers(0, 256, (33, 41), dtype=np.uint8)))  # grayscale
    images.append(Image.fromarray(rng.integers(0, 256, (64, 48, 4), dtype=np.uint8), mode="RGBA"))
    return images


def _no_weights(folder) -> None:
    files = [p.name for p in folder.rglob("*") if p.is_file()]
    assert PREPROCESSING_FILE in files
    assert not [f for f in files if f.endswith(WEIGHT_SUFFIXES)], files


@pytest.mark.parametrize("kind", list(TEXT_KINDS))
def test_saved_tokenizer_tokenizes_exactly_as_the_encoder(kind, tmp_path):
    encoder = TEXT_KINDS[kind](max_length=16)
    folder = encoder.save_preprocessing(tmp_path / "text")
    _no_weights(folder)
    loaded = load_preprocessing(folder, "text")
    assert isinstance(loaded, HFTokenizer) and not isinstance(loaded, torch.nn.Module)
    assert loaded.max_length == 16 and loaded.input_names == encoder.preprocessor.input_names
    for batch in (TEXTS, TEXTS[:1], TEXTS[3:]):
        want, got = encoder.tokenize(batch), loaded.tokenize(batch)
        assert list(got) == list(want)
        for name in want:
            assert torch.equal(got[name], want[name]), name
    assert want["input_ids"].shape[1] == 16  # the long text was truncated to max_length
    # the same vocabulary and rules, not just the same ids on these texts
    assert _tokenizer_hash_text(loaded.tokenizer) == _tokenizer_hash_text(encoder.tokenizer)


@pytest.mark.parametrize("kind", list(IMAGE_KINDS))
def test_saved_image_preprocessing_gives_the_same_pixels(kind, tmp_path):
    encoder: ImageEncoder = IMAGE_KINDS[kind]()
    folder = encoder.save_preprocessing(tmp_path / "image")
    _no_weights(folder)
    loaded = load_preprocessing(folder, "image")
    assert type(loaded) is type(encoder.preprocess) and not isinstance(loaded, torch.nn.Module)
    assert loaded.identity() == encoder.preprocess.identity()
    for image in _images():
        want, got = encoder.preprocess(image), loaded(image)
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_saving_refuses_a_used_folder_and_loading_names_what_is_wrong(tmp_path):
    encoder = tiny_text_encoder()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("x")
    with pytest.raises(PreprocessingError, match="not empty"):
        encoder.save_preprocessing(tmp_path / "used")

    with pytest.raises(FileNotFoundError, match=r"no preprocessing saved in .*save_preprocessing"):
        load_preprocessing(tmp_path / "used")
    folder = encoder.save_preprocessing(tmp_path / "text")
    with pytest.raises(PreprocessingError, match="holds text preprocessing, not image"):
        load_preprocessing(folder, "image")

    entry = json.loads((folder / PREPROCESSING_FILE).read_text())
    for change, message in [
        ({"kind": "sentencepiece"}, "unknown preprocessing 'sentencepiece'"),
        ({"format_version": 99}, "format 99; this mmfuse reads up to 1"),
        ({"settings": {**entry["settings"], "padding": "do_not_pad"}}, "padding='do_not_pad'"),
    ]:
        (folder / PREPROCESSING_FILE).write_text(json.dumps({**entry, **change}))
        with pytest.raises(PreprocessingError, match=message):
            load_preprocessing(folder)
    (folder / PREPROCESSING_FILE).write_text("{not json")
    with pytest.raises(PreprocessingError, match="is damaged"):
        load_preprocessing(folder)


def test_an_encoder_of_your_own_says_how_to_make_its_preprocessing_savable(tmp_path):
    class MyImageEncoder(ImageEncoder):
        def preprocess(self, image):  # a plain method: nothing to save
            return torch.zeros(3, 8, 8)

    with pytest.raises(PreprocessingError, match=r"cannot save a method .*override save_preprocessing"):
        MyImageEncoder().save_preprocessing(tmp_path / "x")
    assert not (tmp_path / "x").exists()
