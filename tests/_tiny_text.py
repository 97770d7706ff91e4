"""Tiny random text models of every supported architecture, saved with ``save_pretrained`` (offline, the real loading
code path), for the text-encoder, early-fusion and export tests.

``tiny_text_dir(kind)`` makes the folder once per process (fixed seed) under the temporary root of ``_tiny`` and
returns it; ``tiny_text_model(kind, **opts)`` builds a fresh encoder from it with ``build_text_encoder``. Every model
has hidden size 32, 2 layers, 2 heads and a small lower-case WordPiece vocabulary (``_tiny._vocab``) in a fast
tokenizer made with the ``tokenizers`` library (for CLIP the pad token is the end-of-text token, as in OpenAI's
tokenizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from _tiny import _root, _vocab
from mmfuse.encoders import TextEncoder, build_text_encoder

# kind -> model_type. E5 and GTE are BERT models.
ENCODER_ONLY_KINDS = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "xlm-roberta",
    "camembert": "camembert",
    "deberta-v3": "deberta-v2",
    "deberta": "deberta",
    "modernbert": "modernbert",
    "mpnet": "mpnet",
    "distilbert": "distilbert",
    "electra": "electra",
}
TOWER_KINDS = {
    "clip": "clip",
    "clip-text": "clip_text_model",
    "siglip": "siglip",
    "siglip-text": "siglip_text_model",
}
TEXT_KINDS = {**ENCODER_ONLY_KINDS, **TOWER_KINDS}
JOINT_KINDS = list(ENCODER_ONLY_KINDS)  # every encoder-only kind above supports joint (early-fusion) encoding

_DIRS: dict[str, Path] = {}
_VOCAB_SIZE = len(_vocab())
_COMMON = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _tokenizer(pad: str = "[PAD]", max_length: int = 128) -> Any:
    """A fast WordPiece tokenizer over the tiny vocabulary: lower-cases, ``[CLS] text [SEP]``."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(_vocab())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token=pad,
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[CLS]",
        eos_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def _config(kind: str) -> Any:
    from transformers import AutoConfig

    common = {"vocab_size": _VOCAB_SIZE, "pad_token_id": 0, "max_position_embeddings": 130}
    if kind == "distilbert":
        return AutoConfig.for_model("distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
    if kind == "deberta-v3":  # DeBERTa-v3: relative positions only, no absolute position embeddings
        return AutoConfig.for_model(
            "deberta-v2", **_COMMON, **common, relative_attention=True, position_biased_input=False,
            pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1, norm_rel_ebd="layer_norm",
            share_att_key=True,
        )  # fmt: skip
    if kind == "deberta":
        return AutoConfig.for_model(
            "deberta", **_COMMON, **common, relative_attention=True, pos_att_type=["c2p", "p2c"]
        )
    if kind == "modernbert":  # one global and one sliding-window layer, rotary positions
        return AutoConfig.for_model(
            "modernbert", **_COMMON, **common, global_attn_every_n_layers=2, local_attention=8,
            bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
        )  # fmt: skip
    extra = {"embedding_size": 16} if kind == "electra" else {}  # ELECTRA projects 16 -> 32 after embedding
    return AutoConfig.for_model(ENCODER_ONLY_KINDS[kind], **_COMMON, **common, **extra)


def _save_tower(kind: str, out: Path) -> None:
    """CLIP / SigLIP: a full model (both towers; the vision tower is what the text encoder must skip) with its image
    processor (32 px: a two-tower folder for ``model.encoder``), or the text tower alone."""
    import transformers as tf

    text = {**_COMMON, "vocab_size": _VOCAB_SIZE, "pad_token_id": 0}
    vision = {**_COMMON, "image_size": 32, "patch_size": 8}
    if kind.startswith("clip"):
        text |= {"max_position_embeddings": 24, "eos_token_id": 3, "bos_token_id": 2}  # [SEP] ends a CLIP text
        if kind == "clip":
            config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
            tf.CLIPModel(config).save_pretrained(out)
            size = {"shortest_edge": 32}
            tf.CLIPImageProcessorPil(size=size, crop_size={"height": 32, "width": 32}).save_pretrained(out)
        else:
            tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**text, projection_dim=24)).save_pretrained(out)
        _tokenizer(pad="[SEP]", max_length=24).save_pretrained(out)  # CLIP pads with its end-of-text token
    else:
        text |= {"max_position_embeddings": 16, "bos_token_id": 2, "eos_token_id": 3}
        if kind == "siglip":
            tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(out)
            tf.SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
        else:
            tf.SiglipTextModel(tf.SiglipTextConfig(**text)).save_pretrained(out)
        _tokenizer(max_length=16).save_pretrained(out)


def tiny_text_dir(kind: str) -> Path:
    """Folder with a tiny random model of ``kind`` (:data:`TEXT_KINDS`) and its tokenizer."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown tiny text kind {kind!r}; known: {list(TEXT_KINDS)}")
    if kind not in _DIRS:
        from transformers import AutoModel

        out = _root() / f"tiny-text-{kind}"
        torch.manual_seed(0)
        if kind in TOWER_KINDS:
            _save_tower(kind, out)
        else:
            model = AutoModel.from_config(_config(kind))
            if kind == "mpnet":  # relative-position biases of a trained model's size (at init, std 0.02: no effect)
                with torch.no_grad():
                    model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
            model.save_pretrained(out)
            _tokenizer().save_pretrained(out)
        _DIRS[kind] = out
    return _DIRS[kind]


def tiny_text_model(kind: str, **opts: Any) -> TextEncoder:
    """A fresh encoder of ``kind`` built by ``build_text_encoder`` from :func:`tiny_text_dir` (options pass on)."""
    return build_text_encoder(str(tiny_text_dir(kind)), **opts)
