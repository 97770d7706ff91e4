"""One CLIP / SigLIP checkpoint, both towers: :func:`build_two_towers` loads the full model once and builds the text
and the image encoder around its two towers (sharing its weights, not copies), together with the model's contrastive
scale (:class:`TwoTowers`), which the ``zero_shot`` head reads.

What each tower's ``pooled`` is, built this way (the same as when each is built alone):

- CLIP: text ``text_embeds`` (``text_projection`` of the end-of-text state), image ``image_embeds``
  (``visual_projection`` of the [CLS] state): both in the shared space CLIP matches images and texts in.
- SigLIP: text and image ``pooler_output`` (the text head over the last position, the attention-pooling head over the
  patches): both in SigLIP's shared space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmfuse.encoders._common import EncoderLoadError, load_pretrained
from mmfuse.encoders.base import ImageEncoder, TextEncoder

TWO_TOWER_MODEL_TYPES = ("clip", "siglip")
"""``model_type`` of a full checkpoint :func:`build_two_towers` reads."""


@dataclass(frozen=True)
class TwoTowers:
    """What both encoders built from one checkpoint share (the same object on both: ``encoder.two_towers``).

    Attributes:
        source: the checkpoint (hub id or folder) both towers come from.
        family: ``"clip"`` or ``"siglip"``.
        logit_scale: the learned temperature, already exponentiated (CLIP ViT-B/32: 100).
        logit_bias: SigLIP's learned bias of its sigmoid loss; ``None`` for CLIP.
    """

    source: str
    family: str
    logit_scale: float
    logit_bias: float | None


def _resolve_source(name: str) -> str:
    """A registered image encoder name (``clip-vit-b32``, ``siglip-b16``) to its hub id; anything else unchanged."""
    from mmfuse.encoders.registry import IMAGE_ENCODERS

    return str(IMAGE_ENCODERS.get(name).resolve_source()) if name in IMAGE_ENCODERS else name


def _sharing(cls: type, config: Any, parts: dict[str, nn.Module]) -> nn.Module:
    """A ``cls(config)`` whose submodules are ``parts`` (the full model's own modules, so the weights are shared):
    made on the meta device, so nothing is allocated or initialised twice."""
    with torch.device("meta"):
        tower = cls(config)
    for attr, module in parts.items():
        setattr(tower, attr, module)
    left = [n for n, t in (*tower.named_parameters(), *tower.named_buffers()) if t.is_meta]
    if left:  # a transformers version with more modules in the tower than in the full model's part
        raise EncoderLoadError(f"{cls.__name__} has modules the full model does not share ({left[:3]})")
    return tower.eval()


def _siglip_tower(cls: type, config: Any, part: nn.Module, attr: str) -> nn.Module:
    """SigLIP's tower model: the full model's part itself where it is one (transformers 5), else one around it."""
    return part.eval() if isinstance(part, cls) else _sharing(cls, config, {attr: part})


def build_two_towers(
    name: str,
    *,
    text_options: dict[str, Any] | None = None,
    image_options: dict[str, Any] | None = None,
) -> tuple[TextEncoder, ImageEncoder]:
    """The text and image encoders of one CLIP / SigLIP checkpoint, its weights read once.

    The encoders are the ones :func:`~mmfuse.encoders.build_text_encoder` and
    :func:`~mmfuse.encoders.build_image_encoder` build from ``name`` (same outputs, same cache identities), but both
    towers sit in one loaded model, and both carry ``two_towers`` (:class:`TwoTowers`, one object).

    Args:
        name: a hub id (``openai/clip-vit-large-patch14``, ``google/siglip-base-patch16-224``), a folder made with
            ``save_pretrained`` of a full ``CLIPModel`` / ``SiglipModel`` with its tokenizer and
            ``preprocessor_config.json``, or a registered image encoder name of one (``clip-vit-b32``).
        text_options: options of the text encoder (``max_length``).
        image_options: options of the image encoder (none today).

    Raises:
        FileNotFoundError: a path that does not exist.
        EncoderLoadError: a checkpoint that cannot be fetched or read.
        ValueError: a model that is not a full CLIP / SigLIP model (a single tower, another model type), or an
            unknown option.
    """
    import transformers as tf
    from transformers import AutoConfig

    from mmfuse.encoders.clip import CLIPVisionEncoder
    from mmfuse.encoders.hf_vision import HFVisionEncoder
    from mmfuse.encoders.registry import _checked_options, is_local
    from mmfuse.encoders.text_towers import CLIPTextEncoder, SiglipTextEncoder

    source = _resolve_source(name)
    if not is_local(source) and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise FileNotFoundError(f"model.encoder folder not found: {name!r}; pass a folder made with save_pretrained")
    config = load_pretrained(AutoConfig.from_pretrained, source, "two-tower model config")
    family = getattr(config, "model_type", None)
    if family not in TWO_TOWER_MODEL_TYPES:
        raise ValueError(
            f"{name!r} is a {family!r} model, not a full CLIP or SigLIP model (model_type {list(TWO_TOWER_MODEL_TYPES)}"
            "), so it has not both towers; set model.text_encoder and model.image_encoder instead of model.encoder"
        )
    clip = family == "clip"
    text_cls, image_cls = (CLIPTextEncoder, CLIPVisionEncoder) if clip else (SiglipTextEncoder, HFVisionEncoder)
    text_opts = _checked_options(text_cls, name, "text", {}, {}, text_options or {})
    image_opts = _checked_options(image_cls, name, "image", {}, {}, image_options or {})
    full_cls = tf.CLIPModel if family == "clip" else tf.SiglipModel
    full, info = load_pretrained(full_cls.from_pretrained, source, f"{family} model", output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise EncoderLoadError(
            f"{name!r} lacks {len(missing)} weight(s) of the {family} model (e.g. {missing[0]!r}): they would be "
            "random; pass a checkpoint of the whole two-tower model"
        )
    full.eval()
    if family == "clip":
        text_config, vision_config = full.config.text_config, full.config.vision_config
        text_config.projection_dim = vision_config.projection_dim = full.config.projection_dim
        text_tower = _sharing(
            tf.CLIPTextModelWithProjection,
            text_config,
            {"text_model": full.text_model, "text_projection": full.text_projection},
        )
        image_tower = _sharing(
            tf.CLIPVisionModelWithProjection,
            vision_config,
            {"vision_model": full.vision_model, "visual_projection": full.visual_projection},
        )
        bias = None
    else:
        text_tower = _siglip_tower(tf.SiglipTextModel, full.config.text_config, full.text_model, "text_model")
        image_tower = _siglip_tower(tf.SiglipVisionModel, full.config.vision_config, full.vision_model, "vision_model")
        bias = float(full.logit_bias.detach().reshape(-1)[0])
    shared = TwoTowers(
        source=source, family=family, logit_scale=float(full.logit_scale.detach().exp()), logit_bias=bias
    )
    text = text_cls(source, name=name, tower=text_tower, **text_opts)
    image = image_cls(source, name=name, tower=image_tower, **image_opts)
    text.two_towers = image.two_towers = shared
    return text, image


def two_towers_of(text_encoder: Any, image_encoder: Any) -> TwoTowers | None:
    """The :class:`TwoTowers` both encoders share (built together by :func:`build_two_towers`), else ``None``."""
    shared = getattr(text_encoder, "two_towers", None)
    return shared if shared is not None and getattr(image_encoder, "two_towers", None) is shared else None


__all__ = ["TWO_TOWER_MODEL_TYPES", "TwoTowers", "build_two_towers", "two_towers_of"]
