"""``HFTextEncoder``: any BERT-family transformers model (BERT, RoBERTa, DistilBERT, ELECTRA, MPNet, MiniLM, ...)
by hub name or local folder, with its own tokenizer, selectable pooling and joint (early-fusion) encoding."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from mmfuse.encoders._common import (
    WeightsFingerprint,
    check_top_k,
    jsonable,
    load_pretrained,
    set_trainable,
)
from mmfuse.encoders._preprocess import HFTokenizer, _tokenizer_hash_text
from mmfuse.encoders.base import EncoderOutput, TextEncoder

Pooling = Literal["cls", "mean"]
POOLINGS: tuple[str, ...] = ("cls", "mean")

# model_type -> attribute of the model that holds the transformer layers. All of these embed tokens in
# ``model.embeddings`` and run ``<stack>(hidden_states, attention_mask=...)`` with ``<stack>.layer`` the layers, so
# embed_tokens / encode_embeddings reproduce ``model(**inputs)`` exactly (tested for each type).
TEXT_MODEL_TYPES: dict[str, str] = {
    "bert": "encoder",
    "roberta": "encoder",
    "xlm-roberta": "encoder",
    "camembert": "encoder",
    "electra": "encoder",
    "mpnet": "encoder",
    "distilbert": "transformer",
}
# Types whose position ids start after the padding index (RoBERTa-style), which costs pad_token_id + 1 positions.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet"}


class HFTextEncoder(TextEncoder):
    """A BERT-family transformer with its tokenizer.

    Outputs: ``sequence`` ``(B, T, D)`` the last hidden states, ``mask`` ``(B, T)`` the attention mask, ``pooled``
    ``(B, D)``: with ``pooling="cls"`` the model's pooler output (dense + tanh over [CLS], as BERT was trained
    with) when the checkpoint has pooler weights, else the [CLS] state; with ``pooling="mean"`` the mean of the
    states over real tokens (how sentence-transformers models such as all-MiniLM-L6-v2 are meant to be read; no
    L2 normalisation). ``dim == sequence_dim`` is the hidden size.

    Joint encoding (``supports_joint_encoding``): :meth:`embed_tokens` gives exactly the embeddings the model feeds
    its first layer, and :meth:`encode_embeddings` runs only the transformer layers, so
    ``encode_embeddings(embed_tokens(x), mask)`` equals ``model(**x).last_hidden_state``. (``model(inputs_embeds=...)``
    would add position and token-type embeddings a second time.)

    Args:
        source: hub id (``"google-bert/bert-base-uncased"``) or a folder made with ``save_pretrained`` holding the
            model and its tokenizer.
        name: the name it was built from (registry or hub name); defaults to ``source``.
        pooling: ``"cls"`` or ``"mean"``, see above.
        max_length: tokens per text after truncation (special tokens included).

    Raises:
        EncoderLoadError: the model or tokenizer cannot be loaded (hub name offline, folder without a model).
        ValueError: an unsupported ``model_type``, a bad ``pooling`` or ``max_length``.
    """

    supports_joint_encoding = True

    def __init__(
        self, source: str | Path, *, name: str | None = None, pooling: Pooling = "cls", max_length: int = 128
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer  # lazy: keeps `import mmfuse` fast

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(
                f"max_length must be an int >= 2 (tokens per text, [CLS] and [SEP] included), got {max_length!r}"
            )
        self.source = str(source)
        self.name = name or self.source
        config = load_pretrained(AutoConfig.from_pretrained, source, "text model config")
        if config.model_type not in TEXT_MODEL_TYPES:
            raise ValueError(
                f"{self.source!r} is a {config.model_type!r} model, not a supported text encoder; supported model "
                f"types: {', '.join(sorted(TEXT_MODEL_TYPES))}"
            )
        usable = config.max_position_embeddings
        if config.model_type in _OFFSET_POSITIONS:
            usable -= (config.pad_token_id or 0) + 1
        if max_length > usable:
            raise ValueError(
                f"max_length={max_length} exceeds the {usable} positions {self.source!r} has; use at most {usable}"
            )
        self.model_type: str = config.model_type
        self.pooling: Pooling = pooling
        self.max_length = max_length

        model, info = load_pretrained(AutoModel.from_pretrained, source, "text model", output_loading_info=True)
        self.model: nn.Module = model
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer")
        # A checkpoint without pooler weights gets a randomly initialised pooler: never read it. Mean pooling never
        # reads the pooler either; dropping it keeps unused (never-trained) parameters out of the module.
        missing_pooler = any(k.startswith("pooler.") for k in info.get("missing_keys", ()))
        if getattr(self.model, "pooler", None) is not None and (pooling != "cls" or missing_pooler):
            self.model.pooler = None
        self.model.eval()

        self.dim = int(config.hidden_size)
        self._stack: nn.Module = getattr(self.model, TEXT_MODEL_TYPES[self.model_type])
        self.num_layers = len(self._stack.layer)
        forward_params = inspect.signature(self.model.forward).parameters
        self._input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in forward_params]
        self._preprocessor = HFTokenizer(self.tokenizer, max_length=max_length, input_names=self._input_names)
        self._embeds_take_token_types = "token_type_ids" in inspect.signature(self.model.embeddings.forward).parameters
        self._fingerprint = WeightsFingerprint()
        self._tokenizer_hash: str | None = None

    @property
    def uses_pooler(self) -> bool:
        """True when ``pooled`` is the model's pooler output (``pooling="cls"`` and the checkpoint has one)."""
        return self.pooling == "cls" and getattr(self.model, "pooler", None) is not None

    # --- tokenizer -----------------------------------------------------------------------------------------------

    @property
    def preprocessor(self) -> HFTokenizer:
        """The tokenizer with this encoder's settings, no weights: what :meth:`tokenize` calls."""
        return self._preprocessor

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenizes ``texts``, padded to the longest and truncated to ``max_length``.

        Returns ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the model takes them), each
        ``(B, T)`` with ``T <= max_length``.
        """
        return self._preprocessor(texts)

    # --- encoding ------------------------------------------------------------------------------------------------

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:  # type: ignore[override]
        """``inputs`` from :meth:`tokenize` → pooled ``(B, D)``, sequence ``(B, T, D)``, mask ``(B, T)``."""
        _check_inputs(inputs)
        out = self.model(**{k: inputs[k] for k in self._input_names if k in inputs})
        seq = out.last_hidden_state
        mask = inputs["attention_mask"].bool()
        if self.uses_pooler:
            pooled = out.pooler_output
        elif self.pooling == "cls":
            pooled = seq[:, 0]
        else:
            m = mask.unsqueeze(-1).to(seq.dtype)  # (B, T, 1)
            pooled = (seq * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        return EncoderOutput(pooled=pooled, sequence=seq, mask=mask)

    def embed_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, D)``: the model's own embedding module on ``input_ids`` (and ``token_type_ids``): word +
        position (+ token-type) embeddings, LayerNorm, dropout (+ ELECTRA's projection to the hidden size)."""
        _check_inputs(inputs)
        kwargs: dict[str, Any] = {"input_ids": inputs["input_ids"]}
        if self._embeds_take_token_types and "token_type_ids" in inputs:
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        embeds = self.model.embeddings(**kwargs)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA: embedding size -> hidden size
        return embeds if project is None else project(embeds)

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Only the transformer layers over ``embeds`` ``(B, L, D)``, with a bidirectional attention mask built
        from ``mask`` ``(B, L)`` (True = real token) the way the model itself builds it. Returns ``(B, L, D)``."""
        if embeds.dim() != 3 or embeds.shape[-1] != self.sequence_dim:
            raise ValueError(f"embeds must be (B, L, {self.sequence_dim}), got {tuple(embeds.shape)}")
        if mask.shape != embeds.shape[:2]:
            raise ValueError(f"mask must be (B, L) = {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(
            config=self.model.config, inputs_embeds=embeds, attention_mask=mask.to(torch.long)
        )
        out = self._stack(embeds, attention_mask=attention)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    # --- freezing and identity ------------------------------------------------------------------------------------

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the top ``trainable_top_k`` transformer layers (and the pooler, when
        ``pooled`` reads it) trainable again. ``0 <= trainable_top_k <= num_layers``."""
        check_top_k(trainable_top_k, self.num_layers, "transformer layers")
        set_trainable([self], False)
        if trainable_top_k:
            set_trainable(self._stack.layer[self.num_layers - trainable_top_k :], True)
            if self.uses_pooler:
                set_trainable([self.model.pooler], True)
        self.train(self.training)

    def cache_identity(self) -> dict[str, Any]:
        """Encoder class and name, model type, a hash of the weights and of the tokenizer, and the tokenization
        and pooling settings."""
        if self._tokenizer_hash is None:
            tok = self.tokenizer
            text = _tokenizer_hash_text(tok)  # padding and truncation: ours are fixed, listed below
            self._tokenizer_hash = hashlib.sha256(f"{type(tok).__name__}|{text}".encode()).hexdigest()
        return jsonable(
            {
                "encoder": type(self).__name__,
                "name": self.name,
                "model_type": self.model_type,
                "weights": self._fingerprint(self.model),
                "tokenizer": self._tokenizer_hash,
                "max_length": self.max_length,
                "padding": "longest",
                "truncation": True,
                "pooling": self.pooling,
                "uses_pooler": self.uses_pooler,
            }
        )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, pooling={self.pooling!r}, max_length={self.max_length}, dim={self.dim}"


def _check_inputs(inputs: dict[str, torch.Tensor]) -> None:
    missing = [k for k in ("input_ids", "attention_mask") if k not in inputs]
    if missing:
        raise ValueError(
            f"text inputs lack {missing}; pass the dict that tokenize() returns (got keys {sorted(inputs)})"
        )
