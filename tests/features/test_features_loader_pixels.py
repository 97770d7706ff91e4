"""What :func:`make_loader` sends from its DataLoader workers, and what :class:`InputMaker` hands the model.

An image encoder whose preprocessor splits into ``to_uint8`` / ``from_uint8`` (EfficientNet-Lite's) gets its batches
as ``uint8`` and normalised by the input maker; the model must see the very bits the float32 preprocessing gave
(compared as int32 bit patterns, so ``-0.0`` against a ``+0.0`` blank would show), blanks of missing and unreadable
images included. Other preprocessors (transformers image processors) keep float32.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from _tiny import tiny_image_encoder
from mmfuse.data import Example
from mmfuse.encoders import EncoderOutput, ImageEncoder
from mmfuse.encoders._preprocess import LitePreprocessor
from mmfuse.features import InputMaker, Tables, make_loader
from mmfuse.features.plan import FeaturePlan

RAW_IMAGE = FeaturePlan(text=None, image="raw")


class _FloatOnly:
    """A Lite preprocessor without its ``to_uint8`` / ``from_uint8`` split: the float32 preprocessing, whole in the
    workers, exactly as every Lite encoder ran before the uint8 transport (picklable for worker processes)."""

    def __init__(self, pre: LitePreprocessor) -> None:
        self.pre = pre

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.pre(image)


class _Lite(ImageEncoder):
    """A tiny convolution behind EfficientNet-Lite's preprocessing (32 px, stretch); ``split=False`` hides the
    uint8 split from the loader (the float32 path)."""

    name = "tiny-lite"
    dim = 4

    def __init__(self, split: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self._pre: Any = LitePreprocessor(image_size=32) if split else _FloatOnly(LitePreprocessor(image_size=32))

    @property
    def preprocess(self) -> Any:  # type: ignore[override]
        return self._pre

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        grid = self.conv(pixel_values)
        return EncoderOutput(pooled=grid.mean(dim=(2, 3)), sequence=grid.flatten(2).transpose(1, 2))

    def cache_identity(self) -> dict[str, Any]:
        return {"encoder": self.name}


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[Example]:
    """Nine examples: seven with images of different sizes and modes, one without, one whose file does not decode."""
    folder = tmp_path_factory.mktemp("loader-pixels")
    rng = np.random.default_rng(0)
    out = []
    for i in range(7):
        size = (40 + 7 * i, 30 + 5 * i)
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        if i == 3:
            image = image.convert("L")  # grayscale: converted to RGB by the preprocessor
        path = folder / f"{i}.png"
        image.save(path)
        out.append(Example(id=str(i), text=f"text {i}", image=path))
    broken = folder / "broken.png"
    broken.write_bytes(b"not a png")
    out.insert(2, replace(out[2], id="none", image=None))
    out.insert(6, replace(out[6], id="broken", image=broken))
    return out


def _bits(x: torch.Tensor) -> torch.Tensor:
    assert x.dtype == torch.float32
    return x.contiguous().view(torch.int32)


def _model_pixels(encoder: ImageEncoder, examples: list[Example], workers: int) -> tuple[list, list[torch.Tensor]]:
    """(the collated batches' pixel dtypes, the pixels InputMaker hands the model) over ``make_loader``."""
    loader = make_loader(
        examples, label_map=None, plan=RAW_IMAGE, image_encoder=encoder, batch_size=4, num_workers=workers
    )
    maker = InputMaker(RAW_IMAGE, Tables(), None, encoder)
    dtypes, pixels = [], []
    for batch in loader:
        dtypes.append(batch["pixel_values"].dtype)
        inputs = maker(batch, "cpu")
        assert inputs.pixel_values is not None
        pixels.append(inputs.pixel_values)
    return dtypes, pixels


@pytest.mark.parametrize("workers", [0, 2])
def test_lite_pixels_cross_the_workers_as_uint8_and_reach_the_model_bit_identical(
    workers: int, examples: list[Example]
) -> None:
    dtypes, pixels = _model_pixels(_Lite(split=True), examples, workers)
    float_dtypes, float_pixels = _model_pixels(_Lite(split=False), examples, workers)
    assert dtypes == [torch.uint8] * 3  # what crosses from the workers: a quarter of the float32 bytes
    assert float_dtypes == [torch.float32] * 3
    got, want = torch.cat(pixels), torch.cat(float_pixels)
    assert torch.equal(_bits(got), _bits(want))
    blanks = [i for i, e in enumerate(examples) if e.id in ("none", "broken")]
    assert blanks == [2, 6]
    assert torch.equal(_bits(got[blanks]), torch.zeros(2, 3, 32, 32, dtype=torch.int32))  # +0.0, as before
    assert got[[0, 1, 3]].abs().sum() > 0  # real images are not blanked


def test_the_model_reads_the_same_features_from_uint8_batches(examples: list[Example]) -> None:
    """The consumer path as the trainer and predictor run it: loader -> InputMaker -> head's encoder."""
    encoder = _Lite(split=True)
    _, pixels = _model_pixels(encoder, examples, 0)
    _, float_pixels = _model_pixels(_Lite(split=False), examples, 0)
    with torch.no_grad():
        for got, want in zip(pixels, float_pixels, strict=True):
            assert torch.equal(encoder(got).pooled, encoder(want).pooled)


def test_a_transformers_image_processor_keeps_float32(examples: list[Example]) -> None:
    encoder = tiny_image_encoder("clip")
    dtypes, pixels = _model_pixels(encoder, examples, 0)
    assert dtypes == [torch.float32] * 3
    direct = torch.stack([encoder.preprocess(Image.open(e.image)) for e in examples[:2]])
    assert torch.equal(pixels[0][:2], direct)


def test_uint8_batches_without_the_image_encoder_are_an_error_that_says_the_fix(examples: list[Example]) -> None:
    encoder = _Lite(split=True)
    batch = next(iter(make_loader(examples, label_map=None, plan=RAW_IMAGE, image_encoder=encoder, batch_size=2)))
    with pytest.raises(ValueError, match=r"uint8 pixel_values .* InputMaker\(plan, tables, text_encoder, image_enc"):
        InputMaker(RAW_IMAGE, Tables(), None)(batch, "cpu")


def test_finish_uint8_blanks_only_the_absent_rows() -> None:
    from mmfuse.features.batches import finish_uint8

    pre = LitePreprocessor(image_size=32)
    pixels = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 3, 4, 4)
    out = finish_uint8(pre.from_uint8, pixels, torch.tensor([True, False]))
    assert torch.equal(_bits(out[0]), _bits((pixels[0].float() - 127) / 128))
    assert torch.equal(_bits(out[1]), torch.zeros(3, 4, 4, dtype=torch.int32))


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_uint8_pixels_are_normalised_on_the_batch_device(device: str, examples: list[Example]) -> None:
    """uint8 crosses to the device (a quarter of the float32 copy) and is normalised there, to the same bits."""
    encoder, reference = _Lite(split=True), _Lite(split=False)
    batch = next(iter(make_loader(examples, label_map=None, plan=RAW_IMAGE, image_encoder=encoder, batch_size=9)))
    want = next(iter(make_loader(examples, label_map=None, plan=RAW_IMAGE, image_encoder=reference, batch_size=9)))
    assert batch["pixel_values"].dtype == torch.uint8
    pixels = InputMaker(RAW_IMAGE, Tables(), None, encoder)(batch, device).pixel_values
    assert pixels is not None and pixels.device.type == device and pixels.dtype == torch.float32
    assert torch.equal(_bits(pixels.cpu()), _bits(want["pixel_values"]))


@pytest.mark.slow
def test_the_real_efficientnet_lite0_reads_the_same_features_from_uint8_batches(examples: list[Example]) -> None:
    """The packaged EfficientNet-Lite0 (224 px): uint8 through 2 workers, the same pixel bits and features as its
    float32 preprocessing."""
    from types import SimpleNamespace

    from _tiny import real_image_encoder

    encoder = real_image_encoder()
    unsplit = SimpleNamespace(preprocess=_FloatOnly(encoder.preprocess))  # the same preprocessing, all in the workers
    dtypes, pixels = _model_pixels(encoder, examples, 2)
    float_dtypes, float_pixels = _model_pixels(unsplit, examples, 2)  # type: ignore[arg-type]
    assert dtypes == [torch.uint8] * 3 and float_dtypes == [torch.float32] * 3
    with torch.no_grad():
        for got, want in zip(pixels, float_pixels, strict=True):
            assert torch.equal(_bits(got), _bits(want))
            assert torch.equal(encoder(got).pooled, encoder(want).pooled)
