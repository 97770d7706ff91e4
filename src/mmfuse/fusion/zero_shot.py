"""``zero_shot``: a CLIP / SigLIP model with no training — each class is a text prompt, an image goes to the class
whose prompt it matches best (Radford et al., 2021). The baseline every trained head on the same encoder must beat.

Both encoders must be the two towers of one checkpoint (``model.encoder``), whose ``pooled`` outputs live in one
shared space, and whose learned scale (and SigLIP's bias) turn cosine similarities into logits:

- CLIP: ``logit_c = scale · cos(image, prompt_c)``; probabilities are the softmax over classes, as CLIP was trained.
- SigLIP: ``s_c = scale · cos(image, prompt_c) + bias`` is a per-class sigmoid logit (SigLIP's loss treats each
  image-text pair alone, so ``σ(s_c)`` do not sum to 1); the head returns ``log σ(s_c)``, so the softmax that turns
  every head's logits into probabilities gives ``σ(s_c) / Σ_j σ(s_j)``: the per-class sigmoids, normalised.

The prompts are embedded once, when the head is built (``class_embeddings``); the head reads no example text, and
has no trainable parameter: ``fit`` trains nothing (it validates once, tunes the binary threshold, and says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.encoders.two_towers import two_towers_of
from mmfuse.fusion._layers import check_classes, require_encoder
from mmfuse.fusion.base import FusionInputs, FusionOutput, ImageUse, TextUse, encode_image
from mmfuse.fusion.registry import FUSION_HEADS

DEFAULT_TEMPLATE = "a photo of {label}"


def class_prompts(classes: Sequence[str], prompts: Mapping[str, str] | None, template: str) -> list[str]:
    """One prompt per class, in ``classes`` order: ``prompts[class]`` where given, else ``template`` with the class
    name as ``{label}``.

    Raises:
        ValueError: a prompt for a class that does not exist, or a template without ``{label}``.
    """
    prompts = dict(prompts or {})
    unknown = sorted(set(prompts) - set(classes))
    if unknown:
        raise ValueError(
            f"params.prompts names class(es) {unknown} that the labels do not have; classes: {list(classes)}"
        )
    if "{label}" not in template:
        raise ValueError(f"params.template must contain '{{label}}' (the class name goes there), got {template!r}")
    return [str(prompts[c]) if c in prompts else template.replace("{label}", c) for c in classes]


@FUSION_HEADS.register("zero_shot")
class ZeroShotHead(nn.Module):
    """Image-prompt similarity of a CLIP / SigLIP model, no trained weights.

    Args:
        text_encoder: the text tower (embeds the prompts here, then is dropped: examples' texts are not read).
        image_encoder: the image tower of the same checkpoint (owned as a submodule).
        num_classes: number of logits ``C``.
        classes: the class names in logit order (filled by the model builder from the labels).
        prompts: class name -> its prompt (``{hateful: "a hateful meme", not_hateful: "a harmless meme"}``); classes
            not named get ``template``.
        template: the prompt of a class without one in ``prompts``; ``{label}`` is the class name.
    """

    uses_text: ClassVar[TextUse] = None
    uses_image: ClassVar[ImageUse] = "pooled"
    needs_text_tower: ClassVar[bool] = True  # built with the text tower, for the prompts
    trains_nothing: ClassVar[bool] = True  # fit validates once and trains no epoch

    def __init__(
        self,
        *,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        num_classes: int,
        classes: Sequence[str] | None = None,
        prompts: dict[str, str] | None = None,
        template: str = DEFAULT_TEMPLATE,
    ) -> None:
        super().__init__()
        check_classes(num_classes)
        require_encoder("zero_shot", "text", text_encoder)
        self.image_encoder = require_encoder("zero_shot", "image", image_encoder)
        self.text_encoder = None
        shared = two_towers_of(text_encoder, image_encoder)
        if shared is None:
            raise ValueError(
                "zero_shot needs the text and image towers of one CLIP / SigLIP checkpoint, built together: set "
                "model.encoder to it (e.g. openai/clip-vit-base-patch32) instead of separate encoder names"
            )
        if prompts is not None and not isinstance(prompts, Mapping):
            raise ValueError(f"params.prompts must map class names to prompts, got {prompts!r}")
        classes = [str(c) for c in classes] if classes is not None else [str(i) for i in range(num_classes)]
        if len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for {num_classes} classes: {classes}")
        self.prompts = class_prompts(classes, prompts, template)
        self.family = shared.family
        self.logit_scale, self.logit_bias = shared.logit_scale, shared.logit_bias
        was_training = text_encoder.training
        text_encoder.eval()
        with torch.no_grad():
            embedded = text_encoder(text_encoder.tokenize(self.prompts)).pooled  # (C, D)
        text_encoder.train(was_training)
        self.register_buffer("class_embeddings", F.normalize(embedded.float(), dim=-1))

    def forward(self, inputs: FusionInputs) -> FusionOutput:
        """Returns ``logits`` ``(B, C)`` (CLIP: scaled cosine similarities; SigLIP: their log-sigmoids, see the
        module) and ``fused`` ``(B, D)``, the normalised image embedding."""
        image = F.normalize(encode_image(self.image_encoder, inputs).pooled.float(), dim=-1)  # (B, D)
        logits = self.logit_scale * image @ self.class_embeddings.T  # (B, C)
        if self.logit_bias is not None:  # SigLIP: per-class sigmoids, normalised by the softmax downstream
            logits = F.logsigmoid(logits + self.logit_bias)
        return FusionOutput(logits=logits, fused=image, embedding=image)

    def extra_repr(self) -> str:
        return f"family={self.family!r}, prompts={self.prompts!r}, logit_scale={self.logit_scale:.4g}"
