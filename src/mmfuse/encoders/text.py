"""``HFTextEncoder``: any encoder-only transformers text model (BERT, RoBERTa, XLM-R, DeBERTa-v2/v3, ModernBERT,
MPNet, DistilBERT, ELECTRA, E5/GTE, MiniLM, ...) by hub name or local folder, through ``AutoModel`` /
``AutoTokenizer``, with selectable pooling and, for the model types in :data:`JOINT_MODEL_TYPES`, joint
(early-fusion) encoding."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Literal

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

Pooling = Literal["cls", "mean", "pooler"]
POOLINGS: tuple[str, ...] = ("cls", "mean", "pooler")

# Joint encoding, per model type. BERT-like types embed tokens in ``model.embeddings`` and run
# ``<stack>(hidden_states, attention_mask=<4-D mask>)`` with ``<stack>.layer`` the layers (model_type -> stack).
_BERT_LIKE_STACKS: dict[str, str] = {
    "bert": "encoder",
    "roberta": "encoder",
    "xlm-roberta": "encoder",
    "camembert": "encoder",
    "electra": "encoder",
    "mpnet": "encoder",
    "distilbert": "transformer",
}
# DeBERTa: embeddings take the padding mask (they zero padded positions), the encoder takes the (B, L) mask and adds
# relative-position attention itself. ModernBERT: rotary positions and local (sliding-window) attention in its layers.
_DEBERTA_TYPES = ("deberta", "deberta-v2")
_MODERNBERT_TYPES = ("modernbert",)
JOINT_MODEL_TYPES: tuple[str, ...] = tuple(sorted({*_BERT_LIKE_STACKS, *_DEBERTA_TYPES, *_MODERNBERT_TYPES}))
"""Model types whose :meth:`HFTextEncoder.embed_tokens` / :meth:`HFTextEncoder.encode_embeddings` reproduce
``model(**inputs)`` exactly (tested for each), so ``early_fusion`` can run them over text and image tokens."""
# Types whose position ids start after the padding index (RoBERTa-style), which costs pad_token_id + 1 positions.
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet"}
# Examples named in messages: the encoder-only families this encoder is tested with.
TESTED_MODEL_TYPES: tuple[str, ...] = (
    "bert", "roberta", "xlm-roberta", "deberta-v2", "modernbert", "mpnet", "distilbert", "electra",
)  # fmt: skip
SUPPORTED_TEXT_MODELS = (
    "encoder-only transformers models (any model type with a masked-LM head in transformers: "
    f"{', '.join(TESTED_MODEL_TYPES)}, ...) and the CLIP / SigLIP text towers (model types clip, clip_text_model, "
    "siglip, siglip_text_model)"
)


def encoder_only_problem(config: Any) -> str | None:
    """Why a transformers ``config`` is not an encoder-only (bidirectional) text model, or ``None`` when it is.

    The rule: ``AutoModelForMaskedLM`` knows the model type (a bidirectional text encoder), the config is neither an
    encoder-decoder nor set up as a (causal) decoder.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return f"model_type {model_type!r} is an encoder-decoder (sequence-to-sequence) model"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        if getattr(config, "is_decoder", False):
            return f"its config sets is_decoder=True, which makes the {model_type!r} model causal (a decoder)"
        return None
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"model_type {model_type!r} is a decoder-only (causal) language model"
    if hasattr(config, "image_size") or hasattr(config, "vision_config"):
        return f"model_type {model_type!r} is an image model (use it as the image encoder)"
    return f"model_type {model_type!r} is not a text encoder transformers knows (no masked-LM model of that type)"


class HFTextEncoder(TextEncoder):
    """An encoder-only transformers text model with its tokenizer.

    Outputs: ``sequence`` ``(B, T, D)`` the last hidden states, ``mask`` ``(B, T)`` the attention mask, ``pooled``
    ``(B, D)``: with ``pooling="cls"`` the model's pooler output (dense + tanh over [CLS], as BERT was trained
    with) when the checkpoint has pooler weights, else the first ([CLS]) state; with ``pooling="pooler"`` always the
    pooler output (an error for a model or checkpoint without one: DeBERTa, ModernBERT, DistilBERT, ELECTRA); with
    ``pooling="mean"`` the mean of the states over real tokens (how sentence-transformers models such as
    all-MiniLM-L6-v2, E5 and GTE are meant to be read; no L2 normalisation). ``dim == sequence_dim`` is the hidden
    size.

    Which models: any model type that transformers has a masked-LM model for (a bidirectional encoder), built with
    ``AutoModel`` and ``AutoTokenizer``; decoder-only and encoder-decoder models are refused with a message.

    Joint encoding (``supports_joint_encoding``, the model types in :data:`JOINT_MODEL_TYPES`): :meth:`embed_tokens`
    gives exactly the embeddings the model feeds its first layer, and :meth:`encode_embeddings` runs only the
    transformer layers, so ``encode_embeddings(embed_tokens(x), mask)`` equals ``model(**x).last_hidden_state``.
    (``model(inputs_embeds=...)`` would add position and token-type embeddings a second time.)

    Args:
        source: hub id (``"google-bert/bert-base-uncased"``) or a folder made with ``save_pretrained`` holding the
            model and its tokenizer.
        name: the name it was built from (registry or hub name); defaults to ``source``.
        pooling: ``"cls"``, ``"mean"`` or ``"pooler"``, see above.
        max_length: tokens per text after truncation (special tokens included).

    Raises:
        EncoderLoadError: the model or tokenizer cannot be loaded (hub name offline, folder without a model, weights
            missing from the checkpoint).
        ValueError: a model that is not encoder-only, a bad ``pooling`` or ``max_length``, ``pooling="pooler"``
            without a pooler.
    """

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
        problem = encoder_only_problem(config)
        if problem is not None:
            raise ValueError(f"{self.source!r} is not a supported text encoder: {problem}; supported: "
                             f"{SUPPORTED_TEXT_MODELS}")  # fmt: skip
        self.model_type: str = config.model_type
        self.pooling: Pooling = pooling
        self.max_length = max_length

        model, info = load_pretrained(AutoModel.from_pretrained, source, "text model", output_loading_info=True)
        missing = list(info.get("missing_keys", ()))
        missing_pooler = any(k.split(".")[0] == "pooler" for k in missing)
        others = [k for k in missing if k.split(".")[0] != "pooler"]
        if others:  # randomly initialised weights would pass for pretrained ones
            raise EncoderLoadError(
                f"the text model {self.source!r} lacks {len(others)} weight(s) its {type(model).__name__} needs "
                f"(e.g. {others[0]!r}); pass a folder or hub id holding the whole {self.model_type!r} model"
            )
        self.model: nn.Module = model
        usable = getattr(config, "max_position_embeddings", None)
        positions = getattr(getattr(model, "embeddings", None), "position_embeddings", None)
        if usable is not None and (
            self.model_type in _OFFSET_POSITIONS or getattr(positions, "padding_idx", None) is not None
        ):
            usable -= (config.pad_token_id or 0) + 1
        if usable is not None and max_length > usable:
            raise ValueError(
                f"max_length={max_length} exceeds the {usable} positions {self.source!r} has; use at most {usable}"
            )
        has_pooler = getattr(self.model, "pooler", None) is not None and not missing_pooler
        if pooling == "pooler" and not has_pooler:
            why = "its checkpoint holds no pooler weights" if missing_pooler else "the model has no pooler"
            raise ValueError(
                f"pooling='pooler' reads the model's pooler output, but {self.source!r} ({self.model_type}) has none "
                f"({why}); use pooling='cls' (the first token's state) or 'mean'"
            )
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, "tokenizer")
        # A checkpoint without pooler weights gets a randomly initialised pooler: never read it. Mean pooling never
        # reads the pooler either; dropping it keeps unused (never-trained) parameters out of the module.
        if getattr(self.model, "pooler", None) is not None and (pooling == "mean" or missing_pooler):
            self.model.pooler = None
        self.model.eval()

        self.dim = int(config.hidden_size)
        # A plain reference, not a second registered submodule: the layers are the model's own, so the state dict
        # holds each weight once (under ``model.``). Checkpoints saved before this also hold them under ``_layers.``
        # (:meth:`legacy_state_aliases`).
        self._layers: nn.ModuleList | None
        object.__setattr__(self, "_layers", _find_layers(self.model, config))
        self.num_layers = 0 if self._layers is None else len(self._layers)
        self.supports_joint_encoding = self.model_type in JOINT_MODEL_TYPES
        forward_params = inspect.signature(self.model.forward).parameters
        self._input_names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in forward_params]
        self._preprocessor = HFTokenizer(self.tokenizer, max_length=max_length, input_names=self._input_names)
        embeddings = getattr(self.model, "embeddings", None)
        embed_params = inspect.signature(embeddings.forward).parameters if embeddings is not None else {}
        self._embeds_take_token_types = "token_type_ids" in embed_params
        self._fingerprint = WeightsFingerprint()
        self._tokenizer_hash: str | None = None

    @property
    def uses_pooler(self) -> bool:
        """True when ``pooled`` is the model's pooler output (``pooling="pooler"``, or ``"cls"`` and the checkpoint
        has one)."""
        return self.pooling in ("cls", "pooler") and getattr(self.model, "pooler", None) is not None

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

    def _require_joint(self) -> None:
        if not self.supports_joint_encoding:
            raise NotImplementedError(
                f"joint encoding is not available for model type {self.model_type!r} ({self.source!r}); it is for "
                f"{', '.join(JOINT_MODEL_TYPES)}"
            )

    def embed_tokens(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, T, D)``: the model's own embedding module on ``input_ids`` (and ``token_type_ids``): word (+
        absolute position) (+ token-type) embeddings, LayerNorm, dropout (+ ELECTRA's projection to the hidden size;
        DeBERTa zeroes padded positions, as its model does)."""
        self._require_joint()
        _check_inputs(inputs)
        kwargs: dict[str, Any] = {"input_ids": inputs["input_ids"]}
        if self._embeds_take_token_types and "token_type_ids" in inputs:
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        if self.model_type in _DEBERTA_TYPES:
            kwargs["mask"] = inputs["attention_mask"]
        embeds = self.model.embeddings(**kwargs)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA: embedding size -> hidden size
        return embeds if project is None else project(embeds)

    def encode_embeddings(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Only the transformer layers over ``embeds`` ``(B, L, D)``, with a bidirectional attention mask built
        from ``mask`` ``(B, L)`` (True = real token) the way the model itself builds it (relative or rotary
        positions, where the model has them, run over ``0 … L-1``). Returns ``(B, L, D)``."""
        self._require_joint()
        if embeds.dim() != 3 or embeds.shape[-1] != self.sequence_dim:
            raise ValueError(f"embeds must be (B, L, {self.sequence_dim}), got {tuple(embeds.shape)}")
        if mask.shape != embeds.shape[:2]:
            raise ValueError(f"mask must be (B, L) = {tuple(embeds.shape[:2])}, got {tuple(mask.shape)}")
        if self.model_type in _DEBERTA_TYPES:  # the encoder builds its mask and relative positions itself
            return self.model.encoder(embeds, mask.to(torch.long)).last_hidden_state
        from transformers.masking_utils import create_bidirectional_mask

        kwargs = {"config": self.model.config, "inputs_embeds": embeds, "attention_mask": mask.to(torch.long)}
        if self.model_type in _MODERNBERT_TYPES:
            return self._modernbert_layers(embeds, kwargs)
        out = _BERT_LIKE_STACKS[self.model_type]
        out = getattr(self.model, out)(embeds, attention_mask=create_bidirectional_mask(**kwargs))
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def _modernbert_layers(self, embeds: torch.Tensor, mask_kwargs: dict[str, Any]) -> torch.Tensor:
        """``ModernBertModel.forward`` after its embedding module: global and sliding-window masks, rotary
        positions ``0 … L-1``, the layers, the final LayerNorm."""
        from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

        model = self.model
        masks = {
            "full_attention": create_bidirectional_mask(**mask_kwargs),
            "sliding_attention": create_bidirectional_sliding_window_mask(**mask_kwargs),
        }
        position_ids = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0)
        rotary = {t: model.rotary_emb(embeds, position_ids, t) for t in set(model.config.layer_types)}
        hidden = embeds
        for layer in model.layers:
            hidden = layer(
                hidden, attention_mask=masks[layer.attention_type], position_embeddings=rotary[layer.attention_type]
            )
        return model.final_norm(hidden)

    # --- freezing and identity ------------------------------------------------------------------------------------

    def freeze(self, trainable_top_k: int = 0) -> None:
        """Freezes everything, then makes the top ``trainable_top_k`` transformer layers (and what follows them: the
        pooler when ``pooled`` reads it, ModernBERT's final LayerNorm) trainable again.
        ``0 <= trainable_top_k <= num_layers``."""
        if trainable_top_k and self._layers is None:
            raise ValueError(
                f"trainable_top_k={trainable_top_k!r} needs the model's list of transformer layers, which mmfuse "
                f"cannot find in a {self.model_type!r} model; use trainable_top_k: 0 (frozen) or freeze: false"
            )
        check_top_k(trainable_top_k, self.num_layers, "transformer layers")
        set_trainable([self], False)
        if trainable_top_k:
            assert self._layers is not None
            set_trainable(self._layers[self.num_layers - trainable_top_k :], True)
            set_trainable([getattr(self.model, "final_norm", None)], True)
            if self.uses_pooler:
                set_trainable([self.model.pooler], True)
        self.train(self.training)

    def legacy_state_aliases(self) -> dict[str, str]:
        """Old state-dict prefix -> today's, for checkpoints saved before the layer stack was held once: they also
        hold every layer's weights under ``_layers.`` (a second registration of ``model``'s own layers)."""
        if self._layers is None:
            return {}
        name = next(n for n, m in self.named_modules() if m is self._layers)
        return {"_layers.": f"{name}."}

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


def _find_layers(model: nn.Module, config: Any) -> nn.ModuleList | None:
    """The model's list of transformer layers (what ``trainable_top_k`` counts from the top), or ``None``: the known
    places first, else the first ``nn.ModuleList`` with ``num_hidden_layers`` entries."""
    known = [getattr(getattr(model, s, None), "layer", None) for s in ("encoder", "transformer")]
    known.append(getattr(model, "layers", None))
    n = getattr(config, "num_hidden_layers", None)
    for layers in known:
        if isinstance(layers, nn.ModuleList) and (n is None or len(layers) == n):
            return layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and n is not None and len(module) == n:
            return module
    return None


def _check_inputs(inputs: dict[str, torch.Tensor]) -> None:
    missing = [k for k in ("input_ids", "attention_mask") if k not in inputs]
    if missing:
        raise ValueError(
            f"text inputs lack {missing}; pass the dict that tokenize() returns (got keys {sorted(inputs)})"
        )
