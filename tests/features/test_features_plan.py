"""The feature plan answers, in one place, whether each modality is precomputed, read raw or absent; the batch maker
follows it."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from mmfuse.encoders import EncoderOutput
from mmfuse.features import MODALITIES, FeaturePlan, FeatureTable, InputMaker, Tables, encoders_of, plan_features


class _Encoder(nn.Module):
    """Stands in for an encoder: the plan reads only ``is_frozen``."""

    def __init__(self, frozen: bool) -> None:
        super().__init__()
        self.is_frozen = frozen


class _Head(nn.Module):
    def __init__(self, text: _Encoder | None, image: _Encoder | None, uses_text: str | None, uses_image: str | None):
        super().__init__()
        self.text_encoder, self.image_encoder = text, image
        self.uses_text, self.uses_image = uses_text, uses_image


class _Wrapped(nn.Module):
    """A head inside another module (as accelerate or a user wrapper may put it): prefixes follow."""

    uses_text: ClassVar[str] = "pooled"
    uses_image: ClassVar[str] = "grid"

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Module()
        self.inner.text = self.text_encoder = _Encoder(True)
        self.inner.image = self.image_encoder = _Encoder(True)


@pytest.mark.parametrize(
    ("text", "image", "raw", "precomputed", "absent", "sequence", "pixels"),
    [
        ("pooled", "pooled", [], ["text", "image"], [], [], False),
        ("sequence", "grid", [], ["text", "image"], [], ["text", "image"], False),
        ("raw", "grid", ["text"], ["image"], [], ["image"], False),
        ("pooled", "raw", ["image"], ["text"], [], [], True),
        ("raw", "raw", ["text", "image"], [], [], [], True),
        ("pooled", None, [], ["text"], ["image"], [], False),
        (None, "raw", ["image"], [], ["text"], [], True),
    ],
)
def test_each_modality_is_exactly_one_of_raw_precomputed_or_absent(
    text: str | None,
    image: str | None,
    raw: list[str],
    precomputed: list[str],
    absent: list[str],
    sequence: list[str],
    pixels: bool,
) -> None:
    plan = FeaturePlan(text=text, image=image)  # type: ignore[arg-type]
    for m in MODALITIES:
        assert plan.reads_raw(m) == (m in raw)
        assert plan.precomputes(m) == (m in precomputed)
        assert plan.reads(m) == (m not in absent)
        assert plan.needs_sequence(m) == (m in sequence)
        assert plan.reads_raw(m) + plan.precomputes(m) + (not plan.reads(m)) == 1
    assert plan.needs_pixels == pixels
    assert plan.precomputed == len(precomputed)


def test_an_unknown_modality_is_refused_by_name() -> None:
    plan = FeaturePlan(text="pooled", image="raw")
    for question in (plan.reads, plan.reads_raw, plan.precomputes, plan.needs_sequence):
        with pytest.raises(ValueError, match="unknown modality 'audio'; use one of text, image"):
            question("audio")


@pytest.mark.parametrize(
    ("text_frozen", "image_frozen", "uses_text", "uses_image", "precompute", "want"),
    [
        (True, True, "pooled", "pooled", True, ("pooled", "pooled")),
        (True, True, "sequence", "grid", True, ("sequence", "grid")),
        (True, True, "tokens", "grid", True, ("raw", "grid")),  # a head that runs the text transformer itself
        (False, True, "pooled", "pooled", True, ("raw", "pooled")),  # a fine-tuned encoder is never precomputed
        (True, False, "sequence", "grid", True, ("sequence", "raw")),
        (True, True, "pooled", "grid", False, ("raw", "raw")),  # precompute off: every encoder runs in the model
        (True, None, "pooled", None, True, ("pooled", None)),
        (None, True, None, "grid", True, (None, "grid")),
    ],
)
def test_plan_features_precomputes_only_what_frozen_encoders_give_the_head(
    text_frozen: bool | None,
    image_frozen: bool | None,
    uses_text: str | None,
    uses_image: str | None,
    precompute: bool,
    want: tuple[str | None, str | None],
) -> None:
    text = None if text_frozen is None else _Encoder(text_frozen)
    image = None if image_frozen is None else _Encoder(image_frozen)
    plan = plan_features(_Head(text, image, uses_text, uses_image), precompute=precompute)
    assert (plan.text, plan.image) == want


def test_encoders_of_finds_each_encoder_and_its_state_dict_prefix() -> None:
    head = _Head(_Encoder(True), None, "pooled", None)
    assert {m: p for m, (p, _) in encoders_of(head).items()} == {"text": "text_encoder."}
    wrapped = _Wrapped()
    found = encoders_of(wrapped)
    assert found["text"][1] is wrapped.text_encoder and found["image"][1] is wrapped.image_encoder
    assert {m: p for m, (p, _) in found.items()} == {"text": "inner.text.", "image": "inner.image."}
    assert plan_features(wrapped) == FeaturePlan(text="pooled", image="grid")


def _batch(n: int) -> dict:
    return {
        "index": torch.arange(n),
        "texts": ["a"] * n,
        "image_present": torch.ones(n, dtype=torch.bool),
        "pixel_values": torch.zeros(n, 3, 4, 4),
    }


def test_the_batch_maker_follows_the_plan() -> None:
    pooled = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    present = torch.tensor([True, False, True])
    tables = Tables(image=FeatureTable(pooled=pooled, present=present))
    inputs = InputMaker(FeaturePlan(text=None, image="pooled"), tables, None)(_batch(3), "cpu")
    assert inputs.text_inputs is None and inputs.text_features is None and inputs.pixel_values is None
    assert isinstance(inputs.image_features, EncoderOutput)
    assert torch.equal(inputs.image_features.pooled, pooled) and torch.equal(inputs.image_present, present)

    raw = InputMaker(FeaturePlan(text=None, image="raw"), Tables(), None)(_batch(2), "cpu")
    assert raw.image_features is None and raw.pixel_values is not None and raw.pixel_values.shape == (2, 3, 4, 4)


def test_a_precomputed_modality_without_its_table_is_an_error_that_says_the_fix() -> None:
    maker = InputMaker(FeaturePlan(text=None, image="grid"), Tables(), None)
    with pytest.raises(ValueError, match="precomputes image, but no image table was given; build the tables"):
        maker(_batch(2), "cpu")
