"""Any transformers vision backbone through ``build_image_encoder(folder)``: ViT, DeiT, DINOv2 (with and without
register tokens), SigLIP (vision tower, and a two-tower checkpoint), ConvNeXt, Swin, each a tiny random model saved
with ``save_pretrained`` (the real, offline loading path): shapes, masks, grids, reference outputs, freezing and
``trainable_top_k``, batch independence, cache identity, preprocessing saved for serving, errors."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image

from _tiny_vision import VISION_ARCHS, tiny_tall_grid_dir, tiny_vision_dir, tiny_vision_encoder
from mmfuse.encoders import HFVisionEncoder, build_image_encoder, load_preprocessing
from mmfuse.encoders.registry import IMAGE_ENCODERS, encoder_option_values

ARCHS = list(VISION_ARCHS)


def _images(n: int) -> list[Image.Image]:
    g = torch.Generator().manual_seed(n)
    return [
        Image.fromarray((torch.rand(40 + 7 * i, 50 - 3 * i, 3, generator=g) * 255).byte().numpy()) for i in range(n)
    ]


def _pixels(enc, n: int = 3) -> torch.Tensor:
    return torch.stack([enc.preprocess(im) for im in _images(n)])


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def encoder(arch) -> HFVisionEncoder:
    return tiny_vision_encoder(arch)


def test_shapes_mask_and_grid(arch, encoder):
    model_type, (h, w) = VISION_ARCHS[arch]
    assert isinstance(encoder, HFVisionEncoder) and encoder.model_type == model_type
    out = encoder(_pixels(encoder))
    assert out.pooled.shape == (3, encoder.dim)
    assert out.sequence.shape == (3, h * w, encoder.sequence_dim)
    assert out.mask.shape == (3, h * w) and out.mask.dtype == torch.bool and out.mask.all()
    assert out.grid == (h, w)
    assert encoder.grid_shape() == (h, w)  # what the feature cache reads for entries stored without their grid
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.sequence).all()


def _reference(arch: str, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled, patch grid) computed with transformers directly, written out per architecture."""
    import transformers as T

    folder = tiny_vision_dir(arch)
    with torch.no_grad():
        if arch in ("vit", "deit", "dinov2", "dinov2-reg"):
            classes = {"vit": T.ViTModel, "deit": T.DeiTModel, "dinov2": T.Dinov2Model}
            cls = classes.get(arch, T.Dinov2WithRegistersModel)
            states = cls.from_pretrained(folder).eval()(pixel_values=pixels).last_hidden_state
            skip = {"vit": 1, "deit": 2, "dinov2": 1, "dinov2-reg": 3}[arch]  # CLS (+ distillation / 2 registers)
            return states[:, 0], states[:, skip:]
        if arch == "vit-cls":  # an image-classification checkpoint: its backbone is .vit
            states = T.ViTForImageClassification.from_pretrained(folder).eval().vit(pixel_values=pixels)
            return states.last_hidden_state[:, 0], states.last_hidden_state[:, 1:]
        if arch == "siglip":
            out = T.SiglipVisionModel.from_pretrained(folder).eval()(pixel_values=pixels)
            return out.pooler_output, out.last_hidden_state
        if arch == "siglip-full":
            full = T.SiglipModel.from_pretrained(folder).eval()
            out = full.vision_model(pixel_values=pixels)
            features = full.get_image_features(pixel_values=pixels)  # what SigLIP matches against text
            features = getattr(features, "pooler_output", features)
            return features, out.last_hidden_state
        if arch == "convnext":
            out = T.ConvNextModel.from_pretrained(folder).eval()(pixel_values=pixels)
            return out.pooler_output, out.last_hidden_state.flatten(2).transpose(1, 2)
        if arch == "swin":
            out = T.SwinModel.from_pretrained(folder).eval()(pixel_values=pixels)
            return out.pooler_output, out.last_hidden_state
    raise AssertionError(arch)


@pytest.mark.numerics  # compared under a float32 tolerance: rerun on the scalar kernels too
def test_outputs_match_transformers_reference(arch, encoder):
    pixels = _pixels(encoder)
    with torch.no_grad():
        out = encoder(pixels)
    pooled, grid = _reference(arch, pixels)
    # same weights, same ops in the same order: equal up to float32 rounding of identically built graphs
    torch.testing.assert_close(out.pooled, pooled, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.sequence, grid, atol=1e-6, rtol=1e-5)


def test_batch_independence(encoder):
    pixels = _pixels(encoder, 4)
    with torch.no_grad():
        whole = encoder(pixels)
        for i in range(4):
            one = encoder(pixels[i : i + 1])
            # batch size changes only the GEMM blocking: float32 rounding, far below any cross-example leak
            torch.testing.assert_close(one.pooled[0], whole.pooled[i], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(one.sequence[0], whole.sequence[i], atol=1e-5, rtol=1e-4)


# the parameter names (prefixes) that trainable_top_k=1 makes trainable: the top block and what follows it
_TOP1 = {
    "vit": ("layers.1.", "layernorm."),
    "vit-cls": ("layers.1.", "layernorm."),
    "deit": ("layers.1.", "layernorm."),
    "dinov2": ("encoder.layer.1.", "layernorm."),
    "dinov2-reg": ("encoder.layer.1.", "layernorm."),
    "siglip": ("encoder.layers.1.", "post_layernorm.", "head."),
    "siglip-full": ("encoder.layers.1.", "post_layernorm.", "head."),
    "convnext": ("encoder.stages.3.layers.0.", "layernorm."),
    "swin": ("encoder.layers.1.blocks.0.", "layernorm."),
}


def _trainable(enc) -> set[str]:
    return {n for n, p in enc.model.named_parameters() if p.requires_grad}


def test_freeze_all_and_top_k(arch):
    enc = tiny_vision_encoder(arch)
    every = {n for n, _ in enc.model.named_parameters()}
    assert _trainable(enc) == every  # built trainable, as every encoder
    enc.freeze()
    assert enc.is_frozen
    assert _trainable(enc) == set()
    enc.freeze(1)
    top = _trainable(enc)
    assert top and all(n.startswith(_TOP1[arch]) for n in top)
    assert {p for p in _TOP1[arch] if any(n.startswith(p) for n in top)} == set(_TOP1[arch])
    enc.freeze(enc.num_layers)
    assert _trainable(enc) >= top and not any(n.startswith("embeddings.") for n in _trainable(enc))
    with pytest.raises(ValueError, match="trainable_top_k must be between 0"):
        enc.freeze(enc.num_layers + 1)


def test_a_frozen_encoder_stays_in_eval_mode(encoder):
    encoder.freeze()
    encoder.train()
    assert not encoder.model.training  # a frozen encoder is a fixed feature extractor (no dropout)


def test_cache_identity_stable_and_follows_weights(arch, encoder):
    identity = encoder.cache_identity()
    assert json.loads(json.dumps(identity)) == identity
    assert tiny_vision_encoder(arch).cache_identity() == identity  # a second load: same identity
    assert identity["encoder"] == "HFVisionEncoder" and identity["model_type"] == VISION_ARCHS[arch][0]
    other = tiny_vision_encoder(arch)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    assert other.cache_identity()["weights"] != identity["weights"]


def test_preprocessing_saves_and_loads_alone(encoder, tmp_path):
    encoder.save_preprocessing(tmp_path / "prep")
    loaded = load_preprocessing(tmp_path / "prep", "image")
    for im in _images(2):
        torch.testing.assert_close(loaded(im), encoder.preprocess(im), atol=0, rtol=0)
    image = _images(1)[0]
    torch.testing.assert_close(pickle.loads(pickle.dumps(encoder.preprocess))(image), encoder.preprocess(image))


def test_a_non_square_patch_grid():
    """ViT patches of 4×16 px on a 32 px image: an 8×2 grid, not the 4×4 a square image's 16 regions would suggest."""
    enc = build_image_encoder(str(tiny_tall_grid_dir()))
    out = enc(_pixels(enc, 2))
    assert out.grid == (8, 2) and out.sequence.shape[1] == 16


def test_unsupported_model_type_names_it_and_the_supported(tmp_path):
    import transformers as T

    T.MobileViTConfig(image_size=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'mobilevit'") as err:
        build_image_encoder(str(tmp_path))
    for supported in ("vit", "dinov2", "siglip", "convnext", "swin", "clip", "resnet"):
        assert supported in str(err.value)


def test_a_checkpoint_missing_weights_is_an_error(tmp_path):
    """Weights the model needs but the folder lacks would be random: refused with the names of a few."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_vision_dir("vit"), tmp_path / "vit")
    weights = tmp_path / "vit" / "model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if ".layer.1." not in k}, weights, metadata={"format": "pt"})
    from mmfuse.encoders import EncoderLoadError

    with pytest.raises(EncoderLoadError, match=r"lacks weights the model needs \(.*layers?\.1\."):
        build_image_encoder(str(tmp_path / "vit"))


def test_registered_hub_names_build_the_generic_encoder_and_take_no_options():
    for name in ("vit-b16", "deit-s16", "dinov2-small", "siglip-b16", "convnext-tiny", "swin-tiny"):
        assert IMAGE_ENCODERS.get(name).cls is HFVisionEncoder
        assert encoder_option_values(name, "image") == {}
    with pytest.raises(ValueError, match="unknown option"):
        encoder_option_values("dinov2-small", "image", {"image_size": 32})


def test_grid_shape_leaves_every_module_in_its_mode():
    enc = tiny_vision_encoder("swin")  # built like every encoder: the wrapper in train mode, the model in eval mode
    modes = [m.training for m in enc.modules()]
    assert enc.grid_shape() == (4, 4)
    assert [m.training for m in enc.modules()] == modes
