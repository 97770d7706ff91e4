"""LoRA on the Hugging Face encoders (``mmfuse.encoders.lora.add_lora``): exactly the adapters of the target layers
train, the base stays frozen and its outputs unchanged until the adapters move, and what cannot take LoRA says so."""

from __future__ import annotations

import re

import pytest
import torch

from _tiny import real_text_encoder, tiny_image_encoder, tiny_text_encoder
from mmfuse.encoders.lora import DEFAULT_TARGETS, LoraError, add_lora, base_weights_hash

pytest.importorskip("peft", reason="LoRA needs the lora extra (peft)")


def _adapter_names(encoder: torch.nn.Module, layers: list[str]) -> set[str]:
    """The adapter weights peft adds beside each target layer (``<layer>.lora_A/B.default.weight``)."""
    names = {n for n, m in encoder.named_modules() if n.rsplit(".", 1)[-1] in layers and hasattr(m, "weight")}
    return {f"{n}.lora_{ab}.default.weight" for n in names for ab in "AB"}


def _trainable(encoder: torch.nn.Module) -> set[str]:
    return {n for n, p in encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("make", "layers", "per_layer"),
    [
        # tiny BERT: 2 layers x (query, value); A is (r, 32), B (32, r)
        (lambda: tiny_text_encoder(), ["query", "value"], 2 * 4 * 32),
        # tiny CLIP vision: 2 layers x (q_proj, v_proj), hidden 32
        (lambda: tiny_image_encoder("clip"), ["q_proj", "v_proj"], 2 * 4 * 32),
        # tiny ResNet: every convolution (stem, blocks, shortcuts) gets a conv adapter
        (lambda: tiny_image_encoder("resnet"), ["convolution"], None),
    ],
    ids=["bert", "clip-vision", "resnet"],
)
def test_only_the_adapters_of_the_target_layers_train(make, layers, per_layer) -> None:
    encoder = make()
    encoder.freeze()
    before = base_weights_hash(encoder)
    add_lora(encoder, r=4)
    expected = _adapter_names(encoder, layers)
    assert expected and _trainable(encoder) == expected
    assert all(re.search(r"\.lora_[AB]\.default\.weight$", n) for n in _trainable(encoder))
    if per_layer is not None:  # the parameter count of a linear adapter: r * (in + out)
        n_layers = len(expected) // 2
        assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == n_layers * per_layer
    assert not encoder.is_frozen
    assert base_weights_hash(encoder) == before  # injecting adapters does not touch the base weights
    targets = DEFAULT_TARGETS[encoder.model.config.model_type]
    assert encoder.lora == {"r": 4, "alpha": 16.0, "dropout": 0.0, "target": targets}


def test_fresh_adapters_leave_the_outputs_unchanged() -> None:
    plain, adapted = tiny_text_encoder(), tiny_text_encoder()
    add_lora(adapted, r=4, target=["query", "key", "value"])
    inputs = plain.tokenize(["the cat is happy", "a dog"])
    # LoRA's B starts at zero, so the update is exactly zero: same ops on the same weights, bit-identical
    assert torch.equal(plain.eval()(inputs).pooled, adapted.eval()(inputs).pooled)


def test_a_target_that_names_no_layer_lists_the_layers_there_are() -> None:
    with pytest.raises(LoraError, match=r"lora.target \['qkv'\] does not fit 'bert'.*'query'"):
        add_lora(tiny_text_encoder(), target=["qkv"])


def test_lora_twice_and_a_bad_rank_are_refused() -> None:
    encoder = add_lora(tiny_text_encoder())
    with pytest.raises(LoraError, match="already"):
        add_lora(encoder)
    with pytest.raises(LoraError, match=r"lora\.r must be an int >= 1"):
        add_lora(tiny_text_encoder(), r=0)


def test_efficientnet_lite_is_refused_naming_what_supports_lora() -> None:
    from mmfuse.encoders import build_image_encoder

    encoder = build_image_encoder("efficientnet-lite0")
    with pytest.raises(LoraError, match=r"EfficientNetLiteEncoder.*LoRA works on the Hugging Face encoders.*CLIP"):
        add_lora(encoder)


@pytest.mark.slow
def test_minilm_takes_lora_on_query_and_value() -> None:
    encoder = real_text_encoder()
    encoder.freeze()
    add_lora(encoder, r=8)
    # all-MiniLM-L6-v2: 6 layers x (query, value) x (A: 8x384, B: 384x8)
    assert _trainable(encoder) == _adapter_names(encoder, ["query", "value"])
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == 6 * 2 * 2 * 8 * 384
