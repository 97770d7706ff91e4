"""The text towers of contrastive image-text models: ``CLIPTextEncoder`` (CLIP's text transformer with its projection)
and ``SiglipTextEncoder`` (SigLIP's), built from a full CLIP / SigLIP checkpoint or from a text tower alone."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mmfuse.encoders._common import (
    EncoderLoadError,
    WeightsFingerprint,
    check_top_k,
    jsonable,
    load_pretrained,
    set_trainable,
)
from mmfuse.encoders._preprocess import HFTokenizer, _tokenizer_hash_text
from mmfuse.encoders.base import EncoderOutput, TextEncoder

CLIP_TEXT_MODEL_TYPES = ("clip", "clip_text_model")
SIGLIP_TEXT_MODEL_TYPES = ("siglip", "siglip_text_model")

# The other tower and the contrastive scale of a full checkpoint: skipped quietly when only the text tower loads.
_OTHER_TOWER = (r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$", r"^logit_bias$")


@functools.cache
def _tower_class(family: str) -> type:
    """``CLIPTextModelWithProjection`` / ``SiglipTextModel`` that skip a full checkpoint's vision tower quietly. Made
    on first use so importing this module does not import the modeling code; module ``__getattr__`` below lets pickle
    find them by name."""
    if family == "clip":
        from transformers import CLIPTextModelWithProjection as base
    else:
        from transformers import SiglipTextModel as base

    name = f"_{base.__name__}Tower"
    tower = type(name, (base,), {"_keys_to_ignore_on_load_unexpected": _OTHER_TOWER})
    tower.__module__, tower.__qualname__ = __name__, name
    return tower


def __getattr__(name: str) -> Any:
    if name == "_CLIPTextModelWithProjectionTower":
        return _tower_class("clip")
    if name == "_SiglipTextModelTower":
        return _tower_class("siglip")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ContrastiveTextEncoder(TextEncoder):
    """What the CLIP and SigLIP text towers share: loading from a full or text-only checkpoint, the tokenizer,
    freezing, identity. Subclasses set the model types, the padding and how ``forward`` reads the model.

    Neither supports joint (early-fusion) encoding: CLIP's text attention is causal, and SigLIP pools its last
    position, which text and image tokens in one sequence would move.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    padding: ClassVar[str]

    def __init__(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        max_length: int | None = None,
        tower: nn.Module | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer  # lazy: keeps `import mmfuse` fast

        self.source = str(source)
        self.name = name or self.source
        config = load_pretrained(AutoConfig.from_pretrained, source, f"{self.family} model config")
        if config.model_type not in self.model_types:
            raise ValueError(
                f"{self.source!r} is a {config.model_type!r} model, not a {self.family} text tower; "
                f"expected model_type in {list(self.model_types)}"
            )
        full = config.model_type == self.model_types[0]  # a full model: its text part
        text_config = config.text_config if full else config
        if full and self.family == "clip":
            text_config.projection_dim = config.projection_dim  # kept on the top-level config, not on text_config
        positions = int(text_config.max_position_embeddings)
        if max_length is None:
            max_length = positions
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not 2 <= max_length <= positions:
            raise ValueError(
                f"max_length must be an int from 2 to {positions} (the positions {self.source!r} has; default "
                f"{positions}), got {max_length!r}"
            )
        self.max_length = max_length
        if tower is not None:  # the text tower of a two-tower model loaded once (mmfuse.encoders.two_towers)
            model, missing = tower, []
        else:
            model, info = load_pretrained(
                _tower_class(self.family).from_pretrained,
                source,
                f"{self.family} text model",
                config=text_config,
                output_loading_info=True,
            )
            missing = list(info.get("missing_keys", ()))
        if missing:
            raise EncoderLoadError(
                f"{self.source!r} lacks {len(missing)} weight(s) of the {self.family} text tower "
                f"(e.g. {missing[0]!r}); "
                f"pass a folder or hub id holding a full {self.family} model or its text tower"
            )
        self.model: nn.Module = model.eval()
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer")
        self._preprocessor = HFTokenizer(
            self.tokenizer, max_length=max_length, input_names=["input_ids", "attention_mask"], padding=self.padding
        )
        self._fingerprint = WeightsFingerprint()
        self._tokenizer_hash: str | None = None

    @property
    def _text(self) -> nn.Module:
        """The module holding ``embeddings``, ``encoder.layers`` and ``final_layer_norm``."""
        return getattr(self.model, "text_model", self.model)

    @property
    def num_layers(self) -> int:
        return len(self._text.encoder.layers)

    @property
    def preprocessor(self) -> HFTokenizer:
        """The tokenizer with this encoder's settings, no weights: what :meth:`tokenize` calls."""
        return self._preprocessor

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenizes ``texts`` (padding: see the class), truncated to ``max_length``: ``input_ids`` and
        ``attention_mask`` ``(B, T)``."""
        return self._preprocessor(texts)

    def _head_modules(self) -> list[nn.Module | None]:
        """What follows the layers and makes ``pooled`` (final LayerNorm, projection / head)."""
        raise NotImplementedError

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the top ``trainable_top_k`` transformer layers, the final LayerNorm and the
        projection (CLIP) / head (SigLIP) trainable again. ``0 <= trainable_top_k <= num_layers``."""
        check_top_k(trainable_top_k, self.num_layers, "transformer layers")
        set_trainable([self], False)
        if trainable_top_k:
            set_trainable(self._text.encoder.layers[self.num_layers - trainable_top_k :], True)
            set_trainable(self._head_modules(), True)
        self.train(self.training)

    def cache_identity(self) -> dict[str, Any]:
        """Encoder class and name, a hash of the weights and of the tokenizer, and the tokenization settings."""
        if self._tokenizer_hash is None:
            tok = self.tokenizer
            text = _tokenizer_hash_text(tok)
            self._tokenizer_hash = hashlib.sha256(f"{type(tok).__name__}|{text}".encode()).hexdigest()
        return jsonable(
            {
                "encoder": type(self).__name__,
                "name": self.name,
                "weights": self._fingerprint(self.model),
                "tokenizer": self._tokenizer_hash,
                "max_length": self.max_length,
                "padding": self.padding,
                "truncation": True,
            }
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, max_length={self.max_length}, dim={self.dim}, sequence_dim={self.sequence_dim}"


class CLIPTextEncoder(_ContrastiveTextEncoder):
    """CLIP's text transformer with its projection (``CLIPTextModelWithProjection``).

    Outputs: ``pooled`` ``(B, dim)`` the projected text embedding (``text_projection`` of the final state at the
    first end-of-text token: the vector CLIP matches against images; ``dim`` = projection size); ``sequence``
    ``(B, T, sequence_dim)`` the token states after the final LayerNorm, unprojected (``sequence_dim`` = hidden
    size); ``mask`` ``(B, T)`` the real tokens. Texts are padded to the longest of the batch: CLIP's attention is
    causal, so no token (and not the end-of-text token ``pooled`` reads) sees the padding after it, and the result
    equals padding to 77 as CLIP was trained.

    Args:
        source: hub id (``"openai/clip-vit-base-patch32"``) or a folder made with ``save_pretrained``, holding a full
            CLIP model (model_type ``clip``) or its text tower (``clip_text_model``), and the tokenizer.
        name: the name it was built from; defaults to ``source``.
        max_length: tokens per text after truncation; default: the model's positions (77).
        tower: the text tower already loaded (a ``CLIPTextModelWithProjection`` sharing a full CLIP model's weights,
            from :func:`~mmfuse.encoders.two_towers.build_two_towers`); default: loaded from ``source``.
    """

    family = "clip"
    model_types = CLIP_TEXT_MODEL_TYPES
    padding = "longest"

    def __init__(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        max_length: int | None = None,
        tower: nn.Module | None = None,
    ) -> None:
        super().__init__(source, name=name, max_length=max_length, tower=tower)
        self.dim = int(self.model.config.projection_dim)
        self.sequence_dim = int(self.model.config.hidden_size)

    def _head_modules(self) -> list[nn.Module | None]:
        return [self._text.final_layer_norm, self.model.text_projection]

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # type: ignore[override]
        """``inputs`` from :meth:`tokenize` → pooled ``(B, dim)``, sequence ``(B, T, sequence_dim)``, mask
        ``(B, T)``."""
        _check_inputs(inputs)
        out = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        mask = inputs["attention_mask"].bool()
        return EncoderOutput(pooled=out.text_embeds, sequence=out.last_hidden_state, mask=mask)


class SiglipTextEncoder(_ContrastiveTextEncoder):
    """SigLIP's text transformer (``SiglipTextModel``).

    Outputs: ``pooled`` ``(B, dim)`` the model's pooler output (its ``head`` over the final state at the last
    position: the vector SigLIP matches against images); ``sequence`` ``(B, T, dim)`` the token states after the
    final LayerNorm; ``mask`` ``(B, T)`` the real tokens (padding ``False``, for heads that read ``sequence``).

    As SigLIP was trained (and as its processor is meant to be called): every text is padded to ``max_length``
    (64, the model's positions) and the model runs without an attention mask, so the pad tokens are attended and the
    last position, which ``pooled`` reads, is a pad token whenever the text is shorter. Padding to the longest text
    of a batch instead would make an example's embedding depend on its batch-mates.

    Args:
        source: hub id (``"google/siglip-base-patch16-224"``) or a folder made with ``save_pretrained``, holding a
            full SigLIP model (model_type ``siglip``) or its text tower (``siglip_text_model``), and the tokenizer.
        name: the name it was built from; defaults to ``source``.
        max_length: tokens per text (every text is padded to it); default: the model's positions (64).
        tower: the text tower already loaded (a ``SiglipTextModel`` sharing a full SigLIP model's weights, from
            :func:`~mmfuse.encoders.two_towers.build_two_towers`); default: loaded from ``source``.
    """

    family = "siglip"
    model_types = SIGLIP_TEXT_MODEL_TYPES
    padding = "max_length"

    def __init__(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        max_length: int | None = None,
        tower: nn.Module | None = None,
    ) -> None:
        super().__init__(source, name=name, max_length=max_length, tower=tower)
        config = self.model.config
        self.dim = int(getattr(config, "projection_size", None) or config.hidden_size)  # pooled: the head's output
        if self.dim != config.hidden_size:
            self.sequence_dim = int(config.hidden_size)

    def _head_modules(self) -> list[nn.Module | None]:
        return [self._text.final_layer_norm, self._text.head]

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # type: ignore[override]
        """``inputs`` from :meth:`tokenize` → pooled ``(B, dim)``, sequence ``(B, T, sequence_dim)``, mask
        ``(B, T)``."""
        _check_inputs(inputs)
        out = self.model(input_ids=inputs["input_ids"])  # no attention mask: as SigLIP was trained
        mask = inputs["attention_mask"].bool()
        return EncoderOutput(pooled=out.pooler_output, sequence=out.last_hidden_state, mask=mask)


def _check_inputs(inputs: dict[str, torch.Tensor]) -> None:
    missing = [k for k in ("input_ids", "attention_mask") if k not in inputs]
    if missing:
        raise ValueError(
            f"text inputs lack {missing}; pass the dict that tokenize() returns (got keys {sorted(inputs)})"
        )
