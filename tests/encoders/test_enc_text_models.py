"""Every supported text architecture as a tiny random model saved with ``save_pretrained`` and built through
``build_text_encoder(folder)``: encoder-only models through AutoModel (BERT, RoBERTa, XLM-R, DeBERTa v1 and v3,
ModernBERT, MPNet, DistilBERT, ELECTRA) and the CLIP / SigLIP text towers (from a full checkpoint and from the text
tower alone). Shapes, masks, pooling, batch independence, joint encoding, freezing and top-k, cache identity, saved
preprocessing, and the messages for what is not supported."""

from __future__ import annotations

import json

import pytest
import torch

from _tiny import tiny_bert_dir
from _tiny_text import ENCODER_ONLY_KINDS, JOINT_KINDS, TEXT_KINDS, TOWER_KINDS, tiny_text_dir, tiny_text_model
from mmfuse.encoders import CLIPTextEncoder, HFTextEncoder, SiglipTextEncoder, build_text_encoder, load_preprocessing
from mmfuse.encoders.text import JOINT_MODEL_TYPES

TEXTS = ["A cat sat on the mat.", "hi", "this meme is funny, but also a little bit sad and angry"]
CLASSES = {**dict.fromkeys(ENCODER_ONLY_KINDS, HFTextEncoder), "clip": CLIPTextEncoder, "clip-text": CLIPTextEncoder}
CLASSES |= {"siglip": SiglipTextEncoder, "siglip-text": SiglipTextEncoder}

_SHARED: dict[str, object] = {}


def shared(kind: str):
    """One encoder per kind for read-only tests (eval mode); never freeze or modify it."""
    if kind not in _SHARED:
        _SHARED[kind] = tiny_text_model(kind).eval()
    return _SHARED[kind]


@pytest.fixture(params=list(TEXT_KINDS))
def kind(request) -> str:
    return request.param


def test_builds_the_right_class_with_shapes_and_masks(kind):
    enc = shared(kind)
    assert type(enc) is CLASSES[kind]
    assert enc.supports_joint_encoding == (kind in JOINT_KINDS)
    x = enc.tokenize(TEXTS)
    assert {"input_ids", "attention_mask"} <= set(x)
    t = x["input_ids"].shape[1]
    with torch.no_grad():
        out = enc(x)
    assert out.pooled.shape == (3, enc.dim)
    assert out.sequence.shape == (3, t, enc.sequence_dim)
    assert out.mask.dtype == torch.bool and torch.equal(out.mask, x["attention_mask"].bool())
    assert out.mask[1].sum() < out.mask[2].sum()  # "hi" has padding
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.sequence).all()
    if kind.startswith("clip"):
        assert (enc.dim, enc.sequence_dim, t) == (24, 32, out.mask[2].sum())  # projected pooled; padded to longest
    elif kind.startswith("siglip"):
        assert t == enc.max_length == 16  # padded to max_length, as SigLIP was trained
    else:
        assert enc.dim == enc.sequence_dim == 32 and out.mask[2].all()


@pytest.mark.numerics
def test_an_example_does_not_depend_on_its_batch_mates(kind):
    enc = shared(kind)
    with torch.no_grad():
        batch = enc(enc.tokenize(TEXTS))
        for i, text in enumerate(TEXTS):
            alone = enc(enc.tokenize([text]))
            n = int(alone.mask.sum())
            # alone or padded in a batch, the same numbers in another summation order: <= 1e-6 measured on the tiny
            # models (vector and scalar kernels); attended padding moves outputs by more than 1e-3
            torch.testing.assert_close(batch.pooled[i], alone.pooled[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch.sequence[i, :n], alone.sequence[0, :n], atol=1e-5, rtol=1e-5)


def test_clip_pooled_is_the_projected_first_end_of_text_state():
    """CLIP pads with its end-of-text token: pooled reads the first one, the real end of the text."""
    enc = shared("clip")
    x = enc.tokenize(TEXTS)
    eos = enc.tokenizer.eos_token_id
    assert enc.tokenizer.pad_token_id == eos
    with torch.no_grad():
        out = enc(x)
        first_eos = (x["input_ids"] == eos).int().argmax(-1)
        want = enc.model.text_projection(out.sequence[torch.arange(3), first_eos])
    torch.testing.assert_close(out.pooled, want)
    assert first_eos.tolist() == (x["attention_mask"].sum(-1) - 1).tolist()


def test_full_checkpoint_and_text_tower_alone_load_the_same_way():
    for full, alone in (("clip", "clip-text"), ("siglip", "siglip-text")):
        a, b = shared(full), shared(alone)
        assert not any(n.startswith(("vision", "model.vision")) for n, _ in a.named_parameters())
        assert {n for n, _ in a.named_parameters()} == {n for n, _ in b.named_parameters()}


def test_siglip_runs_without_attention_mask_on_max_length_padding():
    """SigLIP's convention: every text padded to max_length and no attention mask; pooled = the model's pooler."""
    enc = shared("siglip")
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        out = enc(x)
        ref = enc.model(input_ids=x["input_ids"])
        masked = enc.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
    torch.testing.assert_close(out.pooled, ref.pooler_output)
    assert not torch.allclose(out.pooled[1], masked.pooler_output[1], atol=1e-4)  # the mask would change it
    assert build_text_encoder(str(tiny_text_dir("siglip")), max_length=8).tokenize(["hi"])["input_ids"].shape == (1, 8)


# --- pooling ---


@pytest.mark.parametrize("model_kind", ["bert", "roberta", "xlm-roberta", "mpnet"])
def test_pooler_pooling_reads_the_pooler(model_kind):
    enc = tiny_text_model(model_kind, pooling="pooler").eval()
    assert enc.uses_pooler
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(enc(x).pooled, enc.model(**x).pooler_output)


@pytest.mark.parametrize("model_kind", ["deberta-v3", "modernbert", "distilbert", "electra"])
def test_pooler_pooling_without_a_pooler_is_an_error(model_kind):
    with pytest.raises(ValueError, match=r"pooling='pooler'.*has none.*pooling='cls'.*'mean'"):
        tiny_text_model(model_kind, pooling="pooler")
    enc = tiny_text_model(model_kind, pooling="cls").eval()  # cls: the first token's state
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        out = enc(x)
    torch.testing.assert_close(out.pooled, out.sequence[:, 0])


def test_pooler_pooling_with_a_checkpoint_without_pooler_weights_is_an_error(tmp_path):
    from transformers import BertModel

    src = tiny_bert_dir()
    BertModel.from_pretrained(src, add_pooling_layer=False).save_pretrained(tmp_path)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="no pooler weights"):
        build_text_encoder(str(tmp_path), pooling="pooler")


@pytest.mark.numerics
@pytest.mark.parametrize("model_kind", JOINT_KINDS)
def test_mean_pooling_is_the_masked_mean(model_kind):
    enc = tiny_text_model(model_kind, pooling="mean").eval()
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        out = enc(x)
    for i in range(3):
        # one mean computed two ways: float32 rounding only (0 measured)
        torch.testing.assert_close(out.pooled[i], out.sequence[i, out.mask[i]].mean(0), atol=1e-5, rtol=1e-5)


# --- joint encoding ---


@pytest.mark.numerics
@pytest.mark.parametrize("model_kind", JOINT_KINDS)
def test_joint_encoding_reproduces_the_model(model_kind):
    enc = shared(model_kind)
    assert enc.model_type in JOINT_MODEL_TYPES
    x = enc.tokenize(TEXTS)
    mask = x["attention_mask"].bool()
    with torch.no_grad():
        embeds = enc.embed_tokens(x)
        states = enc.encode_embeddings(embeds, mask)
        ref = enc.model(**x).last_hidden_state
        extra = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(0))
        hidden = enc.encode_embeddings(torch.cat([embeds, extra], 1), torch.cat([mask, torch.zeros(3, 4).bool()], 1))
    # the model's own layers on the same embeddings: 0 measured; 1e-5 allows another float order
    torch.testing.assert_close(states, ref, atol=1e-5, rtol=1e-5)
    # masked extra tokens at the end change nothing for the text (relative positions of the text are unchanged)
    torch.testing.assert_close(hidden[:, : mask.shape[1]][mask], ref[mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_kind", list(TOWER_KINDS))
def test_towers_do_not_support_joint_encoding(model_kind):
    enc = shared(model_kind)
    assert not enc.supports_joint_encoding
    with pytest.raises(NotImplementedError, match="joint encoding"):
        enc.embed_tokens(enc.tokenize(["a"]))


# --- freezing and trainable_top_k ---


def _trainable(enc) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def test_freeze_and_top_k(kind):
    enc = tiny_text_model(kind)
    assert enc.num_layers == 2 and not enc.is_frozen
    enc.freeze()
    assert enc.is_frozen and not _trainable(enc)
    enc.freeze(1)
    trainable = _trainable(enc)
    assert trainable
    layer_names = {n for n in trainable if ".1." in n or "layers.1." in n}
    assert not any(".0." in n for n in trainable), trainable  # layer 0 and the embeddings stay frozen
    assert not any("embed" in n for n in trainable), trainable
    others = trainable - layer_names
    allowed = ("pooler", "final_norm", "final_layer_norm", "text_projection", "head")
    assert all(any(a in n for a in allowed) for n in others), others
    enc.freeze(2)
    assert any(".0." in n for n in _trainable(enc))
    with pytest.raises(ValueError, match="trainable_top_k"):
        enc.freeze(3)


def test_top_k_on_a_model_whose_layers_are_not_found_is_an_error(tmp_path):
    """ALBERT shares one layer group across its depth: no list of layers to count top-k from."""
    from transformers import AlbertConfig, AlbertModel

    src = tiny_text_dir("bert")
    config = AlbertConfig(vocab_size=165, embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=130)  # fmt: skip
    AlbertModel(config).save_pretrained(tmp_path)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    enc = build_text_encoder(str(tmp_path), pooling="mean")
    assert type(enc) is HFTextEncoder and not enc.supports_joint_encoding  # an encoder-only model: accepted
    enc.freeze(0)
    with pytest.raises(ValueError, match=r"trainable_top_k=1.*'albert'.*trainable_top_k: 0"):
        enc.freeze(1)


# --- cache identity and saved preprocessing ---


def test_cache_identity_is_stable_and_tells_models_apart(kind):
    a, b = tiny_text_model(kind), shared(kind)
    ident = a.cache_identity()
    assert json.loads(json.dumps(ident)) == ident
    a.freeze(1)
    a.train()
    assert a.cache_identity() == ident == b.cache_identity()
    with torch.no_grad():
        next(a.parameters()).add_(1e-3)
    assert a.cache_identity()["weights"] != ident["weights"]


def test_cache_identities_differ_between_kinds():
    idents = {k: json.dumps(shared(k).cache_identity(), sort_keys=True) for k in TEXT_KINDS}
    assert len(set(idents.values())) == len(idents)


def test_saved_tokenizer_tokenizes_exactly_as_the_encoder(kind, tmp_path):
    enc = shared(kind)
    folder = enc.save_preprocessing(tmp_path / "text")
    loaded = load_preprocessing(folder, "text")
    assert loaded.settings() == enc.preprocessor.settings()
    for batch in (TEXTS, TEXTS[1:2]):
        want, got = enc.tokenize(batch), loaded.tokenize(batch)
        assert list(got) == list(want)
        for name in want:
            assert torch.equal(got[name], want[name])


# --- what is not supported ---


def _config_only(tmp_path, model_type: str, **kw):
    from transformers import AutoConfig

    AutoConfig.for_model(model_type, **kw).save_pretrained(tmp_path)
    return str(tmp_path)


@pytest.mark.parametrize(
    ("model_type", "kw", "match"),
    [
        ("gpt2", {}, r"'gpt2' is a decoder-only"),
        ("llama", {"hidden_size": 32, "intermediate_size": 64}, r"'llama' is a decoder-only"),
        ("t5", {}, r"'t5' is an encoder-decoder"),
        ("bart", {}, r"'bart' is an encoder-decoder"),
        ("bert", {"is_decoder": True}, r"is_decoder=True.*'bert'"),
        ("vit", {}, r"'vit' is an image model"),
    ],
)
def test_unsupported_models_are_refused_naming_the_type_and_what_is_supported(tmp_path, model_type, kw, match):
    folder = _config_only(tmp_path, model_type, **kw)
    with pytest.raises(ValueError, match=match) as err:
        build_text_encoder(folder)
    assert "supported: encoder-only" in str(err.value) and "siglip" in str(err.value)
    with pytest.raises(ValueError, match=match):
        HFTextEncoder(folder)


def test_options_per_class():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['pooling'\].*max_length=None"):
        build_text_encoder(str(tiny_text_dir("clip")), pooling="mean")
    with pytest.raises(ValueError, match="max_length must be an int from 2 to 24"):
        build_text_encoder(str(tiny_text_dir("clip")), max_length=77)
    assert shared("clip").max_length == 24 and shared("siglip").max_length == 16  # the model's positions


@pytest.mark.parametrize("kind", ["deberta-v3", "clip-text"])
def test_a_checkpoint_missing_weights_is_an_error_not_a_random_layer(kind, tmp_path):
    from safetensors.torch import load_file, save_file

    from mmfuse.encoders import EncoderLoadError

    src = tiny_text_dir(kind)
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(src / "model.safetensors"))
    dropped = next(k for k in weights if "layers.1." in k or "layer.1." in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(tmp_path / "model.safetensors"))
    with pytest.raises(EncoderLoadError, match=r"lacks 1 weight"):
        build_text_encoder(str(tmp_path))
