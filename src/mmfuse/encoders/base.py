"""The one interface every encoder implements, and what it returns.

An encoder owns its preprocessing (tokenizer or image preprocessing), so the data pipeline never
needs to know which model it feeds, and the feature cache can key entries on
``cache_identity()``: the model's weights and its preprocessing. The preprocessing also stands alone:
``encoder.save_preprocessing(folder)`` writes it, and :func:`~mmfuse.encoders.load_preprocessing` reads it back
without the model's weights (what a server of an exported model needs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mmfuse.encoders._preprocess import PreprocessingError, save_preprocessor


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    Attributes:
        pooled: ``(B, D)`` one vector per example.
        sequence: ``(B, N, D)`` token states (text) or grid/patch features (image), or ``None`` when the
            encoder has none.
        mask: ``(B, N)`` bool, ``True`` where ``sequence`` holds a real token/region (padding is ``False``).
        grid: ``(h, w)`` of an image encoder's region/patch grid: ``sequence`` holds its ``h·w`` cells row-major
            (top-left first, ``N == h·w``); ``None`` for text, and for an image encoder that does not say (heads
            then treat the N regions as one row). The same for every example of a batch (an image encoder's
            preprocessing gives every image one size).
    """

    pooled: torch.Tensor
    sequence: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

    def to(self, device: torch.device | str) -> EncoderOutput:
        return EncoderOutput(
            pooled=self.pooled.to(device),
            sequence=None if self.sequence is None else self.sequence.to(device),
            mask=None if self.mask is None else self.mask.to(device),
            grid=self.grid,
        )

    def index(self, idx: torch.Tensor | slice) -> EncoderOutput:
        """Rows ``idx`` of every field (for splitting a batch)."""
        return EncoderOutput(
            pooled=self.pooled[idx],
            sequence=None if self.sequence is None else self.sequence[idx],
            mask=None if self.mask is None else self.mask[idx],
            grid=self.grid,
        )


class Encoder(nn.Module):
    """Common part of text and image encoders.

    Subclasses set ``name`` (the registry/hub name they were built from), ``dim`` (size of ``pooled``), where it
    differs from ``dim`` ``sequence_dim`` (size of each ``sequence`` vector), and implement ``forward``, ``freeze``
    and ``cache_identity``. ``freeze`` should end with ``self.train(self.training)`` so frozen BatchNorm layers
    switch to eval mode at once (see :meth:`train`).
    """

    name: str
    dim: int

    @property
    def sequence_dim(self) -> int:
        """Size of each ``sequence`` vector (token / region); equals ``dim`` unless the encoder sets it.

        It differs where the pooled vector is a projection of another size (CLIP: ``dim`` is the projection size,
        ``sequence_dim`` the vision transformer's hidden size).
        """
        value = getattr(self, "_sequence_dim", None)
        return self.dim if value is None else value

    @sequence_dim.setter
    def sequence_dim(self, value: int) -> None:
        self._sequence_dim = int(value)

    def train(self, mode: bool = True) -> Encoder:
        """Sets train/eval mode, but keeps what is frozen in eval mode.

        - A fully frozen encoder (:attr:`is_frozen`) is a fixed feature extractor: it stays in eval mode (no
          dropout, no drop-connect, BatchNorm running statistics), so it gives the same features in training as
          the feature cache computed for it.
        - Otherwise BatchNorm layers whose parameters are all frozen stay in eval mode. In train mode a BatchNorm
          normalises with batch statistics and updates its running statistics even when its weights are frozen:
          the "frozen" lower layers would drift during training and depend on batch-mates. Trainable BatchNorm
          layers, and everything else, follow ``mode``.
        """
        if mode and self.is_frozen:
            return super().train(False)
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    params = list(module.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        module.eval()
        return self

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes all weights, or all but the top ``trainable_top_k`` layers/blocks."""
        raise NotImplementedError

    # What runs the encoder when it is frozen and fills the feature cache: "torch", "onnxruntime" or "auto" (see
    # mmfuse.encoders.runtime and mmfuse.features.compute; set from model.<modality>_encoder.backend).
    backend: str = "auto"

    # An encoder of features computed elsewhere (``precomputed``) looks them up by example id instead of reading text
    # or pixels: it sets ``reads_example_ids = True`` and implements ``encode_ids``, which the features layer calls
    # in place of tokenize/preprocess + forward.
    reads_example_ids: bool = False

    def encode_ids(self, ids: list[str], *, need_sequence: bool) -> tuple[EncoderOutput, torch.Tensor]:
        """Outputs for the examples ``ids`` and a ``(B,)`` bool tensor, ``False`` where an id had no features (only
        for encoders with ``reads_example_ids``)."""
        raise NotImplementedError(f"{type(self).__name__} reads text or pixels, not example ids")

    @property
    def is_frozen(self) -> bool:
        """True when no parameter of the encoder is trainable (its outputs can then be cached)."""
        return not any(p.requires_grad for p in self.parameters())

    def cache_identity(self) -> dict[str, Any]:
        """JSON-able description of everything that changes the outputs: weights and preprocessing.

        Two encoders with the same identity give the same outputs for the same input; the feature cache hashes it.
        """
        raise NotImplementedError

    @property
    def preprocessor(self) -> Any:
        """The preprocessing alone, no weights: for a text encoder what ``tokenize`` calls, for an image encoder
        ``preprocess``. The built-in encoders return an object :meth:`save_preprocessing` can save."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its preprocessing alone")

    def save_preprocessing(self, folder: str | Path) -> Path:
        """Writes this encoder's preprocessing to ``folder`` (new or empty): the tokenizer or image-processor files
        and the settings mmfuse applies (``max_length``, image size, ...). :func:`~mmfuse.encoders.load_preprocessing`
        gives back an object whose ``tokenize(texts)`` / ``(image)`` output equals this encoder's, without loading
        its weights.

        Raises:
            PreprocessingError: the preprocessing is not one mmfuse can save (an encoder of your own: make
                :attr:`preprocessor` a built-in preprocessor, or override this), or ``folder`` is not empty.
        """
        try:
            preprocessor = self.preprocessor
        except NotImplementedError as exc:
            raise PreprocessingError(f"cannot save the preprocessing of {type(self).__name__}: {exc}") from None
        return save_preprocessor(preprocessor, folder)


class TextEncoder(Encoder):
    """Text encoder: ``tokenize`` turns strings into model inputs, ``forward`` into :class:`EncoderOutput`."""

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenizes a batch (padding, truncation to the encoder's max length); returns tensors."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # type: ignore[override]
        raise NotImplementedError

    # Joint (early-fusion) encoding: a head may run the text transformer over text tokens joined with other
    # embeddings (image regions). Encoders that can do this set ``supports_joint_encoding = True``.
    supports_joint_encoding: bool = False

    def embed_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, D)``: the model's own input embeddings for the tokens, exactly what it feeds its first layer
        (word + position + token-type embeddings, LayerNorm, dropout)."""
        raise NotImplementedError(f"{type(self).__name__} does not support joint encoding")

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Runs only the transformer layers over ``embeds`` ``(B, L, D)`` with ``mask`` ``(B, L)`` bool (True =
        attend); adds no embeddings of its own. Returns the last hidden states ``(B, L, D)``."""
        raise NotImplementedError(f"{type(self).__name__} does not support joint encoding")


class ImageEncoder(Encoder):
    """Image encoder: ``preprocess`` turns one RGB PIL image into a ``(3, H, W)`` float tensor.

    ``preprocess`` must be picklable and cheap to call in DataLoader worker processes. The built-in encoders make
    ``preprocess`` a property returning a small picklable callable (settings only, no weights), so handing
    ``encoder.preprocess`` to a dataset does not ship the model to every worker.
    """

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        raise NotImplementedError

    @property
    def preprocessor(self) -> Any:
        """``preprocess`` (the built-in encoders make it a small savable object, see the class docstring)."""
        return self.preprocess

    def forward(self, pixel_values: torch.Tensor) -> EncoderOutput:  # type: ignore[override]
        raise NotImplementedError

    def grid_shape(self) -> tuple[int, int] | None:
        """``(h, w)`` of the region grid this encoder gives for an image made by its own preprocessing (every image
        is: the preprocessing gives them all one size), or ``None`` when it has no grid or does not say.

        Found by running the encoder once on a blank image (remembered afterwards): what the feature cache uses for
        entries written before the grid was stored with them, so that it is read from the model, never guessed.
        """
        if getattr(self, "_grid_shape", False) is False:
            pixels = self.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))[None]
            param = next(self.parameters(), None)
            if param is not None:
                pixels = pixels.to(device=param.device, dtype=param.dtype)
            modes = [(m, m.training) for m in self.modules()]  # restored exactly (train() would change some)
            self.eval()
            try:
                with torch.inference_mode():
                    self._grid_shape = self(pixels).grid
            finally:
                for module, mode in modes:
                    module.training = mode
        return self._grid_shape
