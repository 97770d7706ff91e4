"""The one contract every fusion head follows: what it takes and what it returns.

A head is a complete model: it is built from already-built encoders (``text_encoder``, ``image_encoder``;
``None`` for the modality a unimodal head does not read), owns them as submodules, and maps a
:class:`FusionInputs` batch to a :class:`FusionOutput`. It computes no loss; the engine owns the loss.

A batch carries either raw encoder inputs (token ids, pixels) or features a frozen encoder produced earlier;
:func:`encode_text` / :func:`encode_image` use whichever is present. Which one a training or evaluation batch
carries is decided once, above this layer, by the feature plan (:class:`mmfuse.features.FeaturePlan`); the server
and the ONNX export always pass raw inputs.

Every head class declares what it reads, for the engine and the feature cache:

- ``uses_text``: a :data:`TextUse`, or ``None`` for a head that reads no text;
- ``uses_image``: an :data:`ImageUse`, or ``None`` for a head that reads no image.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn

from mmfuse.encoders.base import EncoderOutput, ImageEncoder, TextEncoder

TextUse = Literal["pooled", "sequence", "tokens"] | None
"""What a head reads of the text: the ``pooled`` vector; the per-token ``sequence`` (and pooled, mask);
``tokens``: it runs the text transformer itself on the raw token inputs, so its text features cannot be cached
(nor the text encoder's outputs precomputed); ``None``: no text (its text encoder is ``None``, never run)."""

ImageUse = Literal["pooled", "grid"] | None
"""What a head reads of the image: the ``pooled`` vector; the region/patch ``grid`` (``sequence`` and ``mask``,
and pooled); ``None``: no image (its image encoder is ``None``, never run)."""


@dataclass
class FusionInputs:
    """One batch as a head sees it.

    Attributes:
        text_inputs: tokenizer output (``input_ids``, ``attention_mask``, ...), each ``(B, T)``.
        pixel_values: ``(B, 3, H, W)`` preprocessed images.
        text_features: cached text encoder output, used instead of running the text encoder.
        image_features: cached image encoder output, used instead of running the image encoder.
        image_present: ``(B,)`` bool, ``False`` where the image was missing and a blank stands in its place
            (data policy ``blank``). ``None`` means all present.
    """

    text_inputs: dict[str, torch.Tensor] | None = None
    pixel_values: torch.Tensor | None = None
    text_features: EncoderOutput | None = None
    image_features: EncoderOutput | None = None
    image_present: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> FusionInputs:
        return FusionInputs(
            text_inputs=None if self.text_inputs is None else {k: v.to(device) for k, v in self.text_inputs.items()},
            pixel_values=None if self.pixel_values is None else self.pixel_values.to(device),
            text_features=None if self.text_features is None else self.text_features.to(device),
            image_features=None if self.image_features is None else self.image_features.to(device),
            image_present=None if self.image_present is None else self.image_present.to(device),
        )

    def index(self, idx: torch.Tensor | slice) -> FusionInputs:
        """Rows ``idx`` of the batch (used to check that a prediction does not depend on its batch-mates)."""
        return FusionInputs(
            text_inputs=None if self.text_inputs is None else {k: v[idx] for k, v in self.text_inputs.items()},
            pixel_values=None if self.pixel_values is None else self.pixel_values[idx],
            text_features=None if self.text_features is None else self.text_features.index(idx),
            image_features=None if self.image_features is None else self.image_features.index(idx),
            image_present=None if self.image_present is None else self.image_present[idx],
        )


@dataclass
class FusionOutput:
    """What every head returns.

    Attributes:
        logits: ``(B, C)`` unnormalised class scores.
        fused: ``(B, H)`` the joint embedding the classifier reads (for retrieval, ensembling, plots).
        attention: ``(B, Q, N)`` attention of Q queries (text tokens, or 1 pooled query) over N image
            regions/patches, rows summing to 1 over valid regions; ``None`` for heads without it.
        image_reliance: ``(B,)`` in ``[0, 1]``, how much the image contributed to ``fused``; ``None`` for heads
            without it.
        embedding: ``(B, E)`` what the classifier's last linear layer reads (:func:`classify`): ``fused`` after the
            classifier's hidden layer, or ``fused`` itself for a single-layer classifier (dropout is the identity in
            eval mode); the fused embedding of ``MultimodalClassifier.extract_embedding``. ``None`` for a head that
            does not split its classifier.
        grid: ``(h, w)`` of the image grid whose ``h·w`` cells (row-major) are the N regions of ``attention`` (the
            image encoder output's ``grid``); ``None`` without attention, or when the encoder does not say.
    """

    logits: torch.Tensor
    fused: torch.Tensor
    attention: torch.Tensor | None = None
    image_reliance: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Non-None tensor fields by name (what the ONNX export and the server emit; ``grid`` is not a tensor)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}


def classify(classifier: nn.Sequential, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, embedding)``: ``classifier`` applied to ``fused`` ``(B, H)``, with the input of its last layer (a
    linear layer) kept as the embedding ``(B, E)``.

    The same modules run in the same order as ``classifier(fused)``, so the logits are the very same numbers.
    """
    *body, last = classifier
    if not isinstance(last, nn.Linear):
        raise TypeError(f"the classifier must end with an nn.Linear layer, it ends with {type(last).__name__}")
    embedding = fused
    for layer in body:
        embedding = layer(embedding)
    return last(embedding), embedding


def encode_text(encoder: TextEncoder, inputs: FusionInputs) -> EncoderOutput:
    """Cached text features when the batch has them, else the encoder run on the token inputs."""
    if inputs.text_features is not None:
        return inputs.text_features
    if inputs.text_inputs is None:
        raise ValueError("this head reads text, but the batch has neither text_inputs nor text_features")
    return encoder(inputs.text_inputs)


def encode_image(encoder: ImageEncoder, inputs: FusionInputs) -> EncoderOutput:
    """Cached image features when the batch has them, else the encoder run on the pixels.

    Where ``image_present`` is False, the features are zeroed (pooled and grid), so a blank stand-in image
    carries no signal of its own; grid masks are cleared there too, except one region to keep softmax finite.
    """
    if inputs.image_features is not None:
        out = inputs.image_features
    elif inputs.pixel_values is not None:
        out = encoder(inputs.pixel_values)
    else:
        raise ValueError("this head reads images, but the batch has neither pixel_values nor image_features")
    if inputs.image_present is None:
        return out
    keep = inputs.image_present.to(out.pooled.dtype)
    seq, mask = out.sequence, out.mask
    if seq is not None:
        seq = seq * keep[:, None, None]
        if mask is not None:
            mask = mask & inputs.image_present[:, None]
            mask[:, 0] = True  # an absent image leaves one all-zero region, never an all-masked row
    return EncoderOutput(pooled=out.pooled * keep[:, None], sequence=seq, mask=mask, grid=out.grid)
