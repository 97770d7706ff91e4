"""Every fusion head × every encoder kind: shapes, gradients, batch independence, save/load, cached features,
missing images. Heads come from the registry, encoders from the real builders (tests/_tiny.py)."""

from __future__ import annotations

import copy
import fnmatch
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_model, save_model

from _tiny import ENCODER_KINDS, TINY_ENCODER_KINDS, make_encoders
from mmfuse.fusion import FUSION_HEADS, FusionInputs, FusionOutput, build_head, classify, head_params

# zero_shot (no weights; both towers of one CLIP/SigLIP) has its own tests: tests/engine/test_engine_two_towers.py
HEADS = [n for n in FUSION_HEADS.names() if not getattr(FUSION_HEADS.get(n), "trains_nothing", False)]
NUM_CLASSES = 3
TEXTS = ["a cat", "the quick brown fox jumps over the lazy dog", "hello", "four short words here"]
LABELS = torch.tensor([0, 1, 2, 1])

# The real MiniLM + EfficientNet-Lite0 pair runs ~16 images/s on CPU: its combinations are slow tests.
KINDS = [
    *TINY_ENCODER_KINDS,
    *(pytest.param(k, marks=pytest.mark.slow) for k in ENCODER_KINDS[len(TINY_ENCODER_KINDS) :]),
]

# Trainable parameters that legitimately get no gradient from a head: (head pattern, parameter-name pattern).
NO_GRAD_OK: list[tuple[str, str]] = [
    ("early_fusion", "text_encoder.*pooler*"),  # early fusion reads the joint [CLS] state, not the text pooler
    # heads that read only the image grid: CLIP's final LayerNorm and projection only make the pooled vector
    ("early_fusion", "image_encoder.*post_layernorm*"),
    ("early_fusion", "image_encoder.*visual_projection*"),
    ("cross_attention", "image_encoder.*post_layernorm*"),
    ("cross_attention", "image_encoder.*visual_projection*"),
]


@functools.cache
def _encoders(kind: str):
    return make_encoders(kind)


def fresh_encoders(kind: str):
    """A private copy of the (cached) encoders of ``kind``, so tests can freeze or train them freely."""
    text, image = _encoders(kind)
    return copy.deepcopy(text), copy.deepcopy(image)


def make_head(name: str, kind: str, **params) -> torch.nn.Module:
    text, image = fresh_encoders(kind)
    torch.manual_seed(0)
    return build_head(name, text_encoder=text, image_encoder=image, num_classes=NUM_CLASSES, **params)


def texts_for(kind: str) -> list[str]:
    """Four texts of different lengths (padding!) for tiny encoders; two for the slow real pair."""
    return TEXTS if kind in TINY_ENCODER_KINDS else TEXTS[:2]


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(n)]


def raw_inputs(head: torch.nn.Module, texts: list[str], imgs: list[Image.Image]) -> FusionInputs:
    """Raw encoder inputs for the modalities ``head`` reads (the other one left out, as a loader would)."""
    text_inputs = head.text_encoder.tokenize(texts) if head.uses_text else None
    pixels = torch.stack([head.image_encoder.preprocess(im) for im in imgs]) if head.uses_image else None
    return FusionInputs(text_inputs=text_inputs, pixel_values=pixels)


def check_output(out: FusionOutput, inputs: FusionInputs, batch: int) -> None:
    assert isinstance(out, FusionOutput)
    assert out.logits.shape == (batch, NUM_CLASSES)
    assert out.fused.ndim == 2 and out.fused.shape[0] == batch
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.fused).all()
    if out.attention is not None:
        b, t, _ = out.attention.shape
        assert b == batch and t == inputs.text_inputs["attention_mask"].shape[1]
        rows = out.attention.sum(-1)
        text_mask = inputs.text_inputs["attention_mask"].bool()
        torch.testing.assert_close(rows[text_mask], torch.ones_like(rows[text_mask]))
        assert (rows[~text_mask] == 0).all()
    if out.image_reliance is not None:
        assert out.image_reliance.shape == (batch,)
        assert ((out.image_reliance >= 0) & (out.image_reliance <= 1)).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HEADS)
def test_forward_shapes(name: str, kind: str) -> None:
    texts = texts_for(kind)
    head = make_head(name, kind)
    inputs = raw_inputs(head, texts, images(len(texts)))
    check_output(head(inputs), inputs, len(texts))
    if name == "cross_attention":
        out = head(inputs)
        assert out.attention is not None and out.image_reliance is not None


@pytest.mark.parametrize("hidden", [0, 8])
@pytest.mark.parametrize("name", HEADS)
def test_embedding_is_what_the_last_classifier_layer_reads(name: str, hidden: int) -> None:
    """The embedding is the last linear layer's input, and splitting the classifier there leaves the logits the very
    same numbers as the whole classifier on ``fused`` (the same modules in the same order: compared exactly)."""
    head = make_head(name, TINY_ENCODER_KINDS[0], hidden=hidden).eval()
    texts = texts_for(TINY_ENCODER_KINDS[0])
    with torch.no_grad():
        out = head(raw_inputs(head, texts, images(len(texts))))
        assert out.embedding is not None and out.embedding.shape == (len(texts), hidden or out.fused.shape[1])
        assert torch.equal(out.logits, head.classifier(out.fused))
        assert torch.equal(out.logits, head.classifier[-1](out.embedding))


def test_classify_needs_a_classifier_that_ends_with_a_linear_layer() -> None:
    with pytest.raises(TypeError, match=r"must end with an nn\.Linear layer, it ends with ReLU"):
        classify(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), torch.zeros(1, 2))


# (head, modality whose encoder is frozen) for every head that has an encoder of that modality
FROZEN_CASES = [
    (name, modality)
    for name in HEADS
    for modality in ("image", "text")
    if getattr(FUSION_HEADS.get(name), f"uses_{modality}") is not None
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("name", "frozen"), FROZEN_CASES)
def test_backward_reaches_exactly_the_trainable_params(name: str, kind: str, frozen: str) -> None:
    head = make_head(name, kind, dropout=0.0)
    encoder = head.image_encoder if frozen == "image" else head.text_encoder
    assert encoder is not None, f"{name} reads the {frozen} but has no {frozen} encoder"
    encoder.freeze()
    head.train()
    texts = texts_for(kind)
    out = head(raw_inputs(head, texts, images(len(texts))))
    torch.nn.functional.cross_entropy(out.logits, LABELS[: len(texts)]).backward()

    missing = []
    for pname, p in head.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, f"frozen parameter {pname} got a gradient"
            continue
        # a head's own parameter with an all-zero gradient is as disconnected as one with none
        own = not pname.startswith(("text_encoder.", "image_encoder."))
        excused = any(fnmatch.fnmatch(name, h) and fnmatch.fnmatch(pname, pat) for h, pat in NO_GRAD_OK)
        if (p.grad is None or (own and not p.grad.any())) and not excused:
            missing.append(pname)
    assert not missing, f"trainable parameters without a gradient: {missing}"
    frozen_prefix = f"{frozen}_encoder."
    assert not any(p.requires_grad for n, p in head.named_parameters() if n.startswith(frozen_prefix))
    assert any(p.grad is not None for n, p in head.named_parameters() if not n.startswith(frozen_prefix))


@pytest.mark.numerics
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HEADS)
def test_prediction_does_not_depend_on_batch_mates(name: str, kind: str) -> None:
    head = make_head(name, kind).eval()
    texts = texts_for(kind)
    imgs = images(len(texts))
    # Alone and in a padded batch, the same numbers are summed in another order: float32 rounding only, <= 1e-6 with
    # the tiny encoders and <= 4e-6 with MiniLM + EfficientNet-Lite0 (measured on vector and on scalar kernels), at
    # most 30 % of the 1e-5 tolerance; a padding token that leaks into attention moves outputs by more than 1e-3
    # (test_joint_encoding_masked_extra_tokens_change_nothing)
    with torch.no_grad():
        batch = head(raw_inputs(head, texts, imgs))
        for i in range(len(texts)):
            alone_inputs = raw_inputs(head, texts[i : i + 1], imgs[i : i + 1])  # tokenized alone: no padding
            alone = head(alone_inputs)
            torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.fused[0], batch.fused[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.embedding[0], batch.embedding[i], atol=1e-5, rtol=1e-5)
            if batch.image_reliance is not None:
                torch.testing.assert_close(alone.image_reliance[0], batch.image_reliance[i], atol=1e-5, rtol=1e-5)
            if batch.attention is not None:
                t = alone.attention.shape[1]
                torch.testing.assert_close(alone.attention[0], batch.attention[i, :t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HEADS)
def test_save_load_round_trip(name: str, kind: str, tmp_path: Path) -> None:
    texts = texts_for(kind)
    head = make_head(name, kind).eval()
    inputs = raw_inputs(head, texts, images(len(texts)))
    save_model(head, str(tmp_path / "head.safetensors"))

    text, image = fresh_encoders(kind)
    torch.manual_seed(1)  # different initial weights: everything must come from the file
    fresh = build_head(name, text_encoder=text, image_encoder=image, num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(inputs).logits, head(inputs).logits)
        load_model(fresh, str(tmp_path / "head.safetensors"))
        torch.testing.assert_close(fresh(inputs).logits, head(inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HEADS)
def test_cached_features_give_the_same_logits(name: str, kind: str) -> None:
    head = make_head(name, kind).eval()
    texts = texts_for(kind)
    raw = raw_inputs(head, texts, images(len(texts)))
    with torch.no_grad():
        expected = head(raw)
        cached = FusionInputs(
            # a head that runs the text transformer itself ("tokens") still needs the tokens; nothing else raw
            text_inputs=raw.text_inputs if head.uses_text == "tokens" else None,
            text_features=head.text_encoder(raw.text_inputs) if head.uses_text not in (None, "tokens") else None,
            image_features=head.image_encoder(raw.pixel_values) if head.uses_image else None,
        )
        got = head(cached)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
    if expected.attention is not None:
        torch.testing.assert_close(got.attention, expected.attention, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", HEADS)
def test_missing_images_give_finite_outputs_and_gradients(name: str, kind: str) -> None:
    texts = texts_for(kind)
    head = make_head(name, kind)
    inputs = raw_inputs(head, texts, images(len(texts)))
    for present in ([True, False, True, False][: len(texts)], [False] * len(texts)):
        head.zero_grad()
        inputs.image_present = torch.tensor(present)
        out = head(inputs)
        check_output(out, inputs, len(texts))
        out.logits.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
        if out.image_reliance is not None:
            absent = ~torch.tensor(present)
            assert (out.image_reliance[absent] == 0).all(), "an absent image cannot contribute"


# --- errors at the boundary ---------------------------------------------------------------------------


def test_unknown_head_lists_the_known_ones() -> None:
    text, image = fresh_encoders(TINY_ENCODER_KINDS[0])
    with pytest.raises(ValueError, match=r"unknown fusion head 'late'.*concat.*cross_attention"):
        build_head("late", text_encoder=text, image_encoder=image, num_classes=2)


@pytest.mark.parametrize("name", HEADS)
def test_unknown_param_lists_the_allowed_ones(name: str) -> None:
    text, image = fresh_encoders(TINY_ENCODER_KINDS[0])
    allowed = head_params(name)
    assert "dropout" in allowed and "hidden" in allowed
    with pytest.raises(ValueError, match=rf"unknown hyperparameter.*'hiden'.*{name}.*hidden=256"):
        build_head(name, text_encoder=text, image_encoder=image, num_classes=2, hiden=8)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"normalize": 3}, r"params\.normalize of head 'concat' must be true or false \(default True\), got 3"),
        ({"hidden": "wide"}, r"params\.hidden of head 'concat' must be a number \(default 256\), got 'wide'"),
        ({"dropout": True}, r"params\.dropout of head 'concat' must be a number \(default 0\.1\), got True"),
    ],
)
def test_param_of_the_wrong_kind_is_refused_as_a_config_refuses_it(params: dict, message: str) -> None:
    """build_head and a config's ``model.head`` run the one check (``check_head_params``): same rule, same words."""
    from mmfuse.config import ConfigError, config_from

    text, image = fresh_encoders(TINY_ENCODER_KINDS[0])
    with pytest.raises(ValueError, match=message):
        build_head("concat", text_encoder=text, image_encoder=image, num_classes=2, **params)
    with pytest.raises(ConfigError, match=message):
        config_from(head="concat", **{f"head.params.{k}": v for k, v in params.items()})


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("concat", {"dropout": 1.5}, "dropout must be in"),
        ("concat", {"hidden": -1}, "hidden must be an int >= 0"),
        ("cross_attention", {"dim": 30, "num_heads": 4}, "num_heads=4 must divide dim=30"),
        ("cross", {"proj_dim": 0}, "proj_dim must be a positive int"),
        ("early_fusion", {"num_image_tokens": 0}, "num_image_tokens must be a positive int"),
        ("align", {}, "num_classes must be a positive int"),
    ],
)
def test_bad_values_raise(name: str, params: dict, message: str) -> None:
    text, image = fresh_encoders(TINY_ENCODER_KINDS[0])
    num_classes = 0 if name == "align" else 2
    with pytest.raises(ValueError, match=message):
        build_head(name, text_encoder=text, image_encoder=image, num_classes=num_classes, **params)


@pytest.mark.parametrize("name", HEADS)
def test_missing_encoder_raises_and_unused_one_is_dropped(name: str) -> None:
    text, image = fresh_encoders(TINY_ENCODER_KINDS[0])
    cls = FUSION_HEADS.get(name)
    if cls.uses_text:
        with pytest.raises(ValueError, match="pass a built text_encoder"):
            build_head(name, text_encoder=None, image_encoder=image, num_classes=2)
    if cls.uses_image:
        with pytest.raises(ValueError, match="pass a built image_encoder"):
            build_head(name, text_encoder=text, image_encoder=None, num_classes=2)
    head = build_head(name, text_encoder=text, image_encoder=image, num_classes=2)
    assert (head.text_encoder is None) == (cls.uses_text is None)
    assert (head.image_encoder is None) == (cls.uses_image is None)


def test_every_head_declares_what_it_reads() -> None:
    for name in HEADS:
        cls = FUSION_HEADS.get(name)
        assert cls.uses_text in (None, "pooled", "sequence", "tokens"), name
        assert cls.uses_image in (None, "pooled", "grid"), name
        assert cls.uses_text or cls.uses_image, name
    assert FUSION_HEADS.get("early_fusion").uses_text == "tokens"
    assert {"concat", "cross_attention", "early_fusion", "align", "cross", "text_only", "image_only"} <= set(HEADS)


def test_early_fusion_keeps_cls_first_and_embeds_text_once() -> None:
    """The joint sequence starts with the text model's own [CLS] embedding, text embedded exactly once; each row's
    image tokens follow its last real text token, and its text padding comes last."""
    head = make_head("early_fusion", TINY_ENCODER_KINDS[0]).eval()
    inputs = raw_inputs(head, TEXTS, images(len(TEXTS)))
    seen = {}
    original = head.text_encoder.encode_embeddings

    def spy(embeds, mask):
        seen["embeds"], seen["mask"] = embeds, mask
        return original(embeds, mask)

    head.text_encoder.encode_embeddings = spy
    with torch.no_grad():
        head(inputs)
        own = head.text_encoder.embed_tokens(inputs.text_inputs)
    text_mask = inputs.text_inputs["attention_mask"].bool()
    t, k = own.shape[1], seen["embeds"].shape[1] - own.shape[1]
    assert k > 0 and seen["mask"][:, 0].all()
    assert (text_mask.sum(1) < t).any()  # some rows are padded: the test sees the placement
    for i in range(len(TEXTS)):
        n = int(text_mask[i].sum())
        torch.testing.assert_close(seen["embeds"][i, :n], own[i, :n] + head.text_type)  # [CLS] text … [SEP]
        assert seen["mask"][i, n : n + k].all()  # then the image tokens (all valid here)
        torch.testing.assert_close(seen["embeds"][i, n + k :], own[i, n:] + head.text_type)  # then the padding
        assert not seen["mask"][i, n + k :].any()


def test_pool_regions_averages_valid_regions_in_runs() -> None:
    from mmfuse.fusion.early_fusion import pool_regions

    grid = torch.randn(2, 49, 5)
    mask = torch.ones(2, 49, dtype=torch.bool)
    pooled, pooled_mask = pool_regions(grid, mask, 16)
    expected = torch.nn.functional.adaptive_avg_pool1d(grid.transpose(1, 2), 16).transpose(1, 2)
    torch.testing.assert_close(pooled, expected)
    assert pooled_mask.all()

    mask[1, 1:] = False  # only region 0 valid: the first run is region 0 alone, the rest are masked out
    pooled, pooled_mask = pool_regions(grid, mask, 16)
    torch.testing.assert_close(pooled[1, 0], grid[1, 0])
    assert pooled_mask[1].tolist() == [True] + [False] * 15
    small = torch.randn(2, 4, 5)
    assert pool_regions(small, mask[:, :4], 16)[0] is small  # a grid within the cap is kept as is
