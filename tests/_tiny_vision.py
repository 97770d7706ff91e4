"""Tiny random transformers vision backbones for tests, one per architecture :class:`HFVisionEncoder` reads (and
CLIP / ResNet, read by their own classes), saved with ``save_pretrained`` together with an image processor, and
loaded through the real builder (``build_image_encoder(folder)``, offline).

Plain functions, importable as ``from _tiny_vision import ...`` (``tests/`` is on ``sys.path``). Folders are made
once per process (fixed seeds) in a temporary folder removed at exit; :func:`tiny_vision_encoder` returns a fresh
encoder each call. Sizes: 32 px images and 8 px patches (4×4 grid) for the patch-token models (ConvNeXt: 64 px,
2×2; Swin: 32 px, 4 px patches, two stages: 4×4), hidden 32, 2 layers.

``VISION_ARCHS``: architecture -> (model_type, grid, checkpoint kind). ``dinov2-reg`` has register tokens,
``siglip-full`` is a two-tower SigLIP checkpoint (its vision tower is read), ``vit-cls`` an image-classification
checkpoint (a classifier on top, no pooler).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mmfuse.encoders import ImageEncoder, build_image_encoder

# name -> (model_type, (h, w) grid)
VISION_ARCHS: dict[str, tuple[str, tuple[int, int]]] = {
    "vit": ("vit", (4, 4)),
    "vit-cls": ("vit", (4, 4)),
    "deit": ("deit", (4, 4)),
    "dinov2": ("dinov2", (4, 4)),
    "dinov2-reg": ("dinov2_with_registers", (4, 4)),
    "siglip": ("siglip_vision_model", (4, 4)),
    "siglip-full": ("siglip", (4, 4)),
    "convnext": ("convnext", (2, 2)),
    "swin": ("swin", (4, 4)),
}

_DIRS: dict[str, Path] = {}
_ROOT: list[Path] = []
_VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def _root() -> Path:
    if not _ROOT:
        root = Path(tempfile.mkdtemp(prefix="mmfuse-tiny-vision-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _ROOT.append(root)
    return _ROOT[0]


def _model_and_processor(arch: str) -> tuple[Any, Any]:
    import transformers as T

    size32 = {"height": 32, "width": 32}
    if arch == "vit":
        return T.ViTModel(T.ViTConfig(**_VIT, intermediate_size=64)), T.ViTImageProcessorPil(size=size32)
    if arch == "vit-cls":
        model = T.ViTForImageClassification(T.ViTConfig(**_VIT, intermediate_size=64, num_labels=3))
        return model, T.ViTImageProcessorPil(size=size32)
    if arch == "deit":
        processor = T.DeiTImageProcessorPil(size=size32, crop_size=size32)
        return T.DeiTModel(T.DeiTConfig(**_VIT, intermediate_size=64)), processor
    if arch == "dinov2":
        processor = T.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size=size32)
        return T.Dinov2Model(T.Dinov2Config(**_VIT, mlp_ratio=2)), processor
    if arch == "dinov2-reg":
        processor = T.BitImageProcessorPil(size={"shortest_edge": 32}, crop_size=size32)
        config = T.Dinov2WithRegistersConfig(**_VIT, mlp_ratio=2, num_register_tokens=2)
        return T.Dinov2WithRegistersModel(config), processor
    if arch == "siglip":
        config = T.SiglipVisionConfig(**_VIT, intermediate_size=64)
        return T.SiglipVisionModel(config), T.SiglipImageProcessorPil(size=size32)
    if arch == "siglip-full":
        vision = {**_VIT, "intermediate_size": 64}
        text = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
        text.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)
        config = T.SiglipConfig(vision_config=vision, text_config={**text, "intermediate_size": 64})
        return T.SiglipModel(config), T.SiglipImageProcessorPil(size=size32)
    if arch == "convnext":
        config = T.ConvNextConfig(image_size=64, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
        return T.ConvNextModel(config), T.ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875)
    if arch == "swin":
        config = T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
        return T.SwinModel(config), T.ViTImageProcessorPil(size=size32)
    raise ValueError(f"unknown tiny vision architecture {arch!r}; known: {sorted(VISION_ARCHS)}")


def tiny_vision_dir(arch: str) -> Path:
    """Folder with a tiny random ``arch`` model and its image processor, both saved with ``save_pretrained``."""
    if arch not in _DIRS:
        torch.manual_seed(0)
        model, processor = _model_and_processor(arch)
        out = _root() / arch
        model.save_pretrained(out)
        processor.save_pretrained(out)
        _DIRS[arch] = out
    return _DIRS[arch]


def tiny_vision_encoder(arch: str, **opts: Any) -> ImageEncoder:
    """A fresh encoder built by ``build_image_encoder`` from :func:`tiny_vision_dir` (options pass on)."""
    return build_image_encoder(str(tiny_vision_dir(arch)), **opts)


def tiny_tall_grid_dir() -> Path:
    """Folder with a tiny random ViT of 4×16 px patches: an 8×2 grid on its 32 px square images, where a guess from
    16 regions of a square image would say 4×4."""
    if "tall" not in _DIRS:
        import transformers as T

        torch.manual_seed(0)
        config = T.ViTConfig(**{**_VIT, "patch_size": (4, 16)}, intermediate_size=64)
        out = _root() / "tall-grid"
        T.ViTModel(config).save_pretrained(out)
        T.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
        _DIRS["tall"] = out
    return _DIRS["tall"]
