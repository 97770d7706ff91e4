"""Explanations of single predictions (``mmfuse.model.explain``, what ``MultimodalClassifier.explain`` and
``mmfuse explain`` return): occlusion of words and regions, modality contributions, word × region attention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _tiny import tiny_bert_dir, tiny_image_encoder, tiny_text_encoder
from mmfuse.data import DataConfig, Example, load_splits, make_synthetic
from mmfuse.fusion import build_head
from mmfuse.model import TorchPredictor, UnknownIdsError, explain_examples
from mmfuse.model.explain import word_token_spans


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread: None) -> None:
    """Every test here runs with one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list[Example]:
    """The 6 validation examples of 40 synthetic ones (text and image)."""
    root = make_synthetic(tmp_path_factory.mktemp("explain-data"), n=40, seed=0)
    return load_splits(DataConfig(root=root, preset="hateful_memes"))["val"].examples


def _predictor(head: str, image: str = "clip", **text_options: object) -> TorchPredictor:
    torch.manual_seed(0)
    text_encoder = tiny_text_encoder(**text_options) if head != "image_only" else None
    image_encoder = tiny_image_encoder(image) if head != "text_only" else None
    model = build_head(head, text_encoder=text_encoder, image_encoder=image_encoder, num_classes=2)
    return TorchPredictor(model, classes=["0", "1"])


def test_a_text_only_head_gets_no_contribution_from_the_image(examples: list[Example]) -> None:
    [e] = explain_examples(_predictor("text_only"), examples, [examples[0].id])
    assert e.image_contribution == 0.0
    assert e.region_contributions.shape == (1, 1) and np.all(e.region_contributions == 0.0)
    assert len(e.word_contributions) == len(examples[0].text.split()) > 0
    assert np.any(e.word_contributions != 0.0)  # the words it reads do move it
    assert any("reads no image" in n for n in e.notes)


def test_an_image_only_head_gets_no_contribution_from_the_words(examples: list[Example]) -> None:
    [e] = explain_examples(_predictor("image_only"), examples, [examples[0].id])
    assert e.text_contribution == 0.0
    assert len(e.words) > 0 and np.all(e.word_contributions == 0.0)
    assert not e.words_read.any()
    assert e.grid == (4, 4)  # the tiny CLIP's patch grid: 32 px / 8 px patches
    assert np.any(e.region_contributions != 0.0) and e.image_contribution != 0.0


@pytest.mark.parametrize(("head", "image", "grid"), [("concat", "resnet", (2, 2)), ("cross_attention", "clip", (4, 4))])
def test_regions_are_the_image_encoders_grid_and_the_probability_is_predicts(
    examples: list[Example], head: str, image: str, grid: tuple[int, int]
) -> None:
    predictor = _predictor(head, image)
    found = explain_examples(predictor, examples, [examples[1].id, examples[0].id, examples[1].id])
    assert [e.id for e in found] == [examples[1].id, examples[0].id]  # in the order asked, each once
    proba = predictor.predict_proba(examples[:2])
    for e, row in zip(found, proba[::-1], strict=True):
        assert e.grid == grid
        assert e.label == str(int(row.argmax()))
        # the example alone vs in a batch of 2: the same model in another float summation order
        assert e.probability == pytest.approx(float(row.max()), abs=1e-5)
        assert np.isfinite(e.region_contributions).all() and np.isfinite(e.word_contributions).all()


def test_a_calibrated_models_explanation_is_on_its_calibrated_probabilities(examples: list[Example]) -> None:
    """The probability explained (and the contributions: differences of it) is the one predict gives, after the
    calibration temperature, so a report's card and its panel show the same number."""
    plain = _predictor("cross_attention")
    calibrated = TorchPredictor(plain.model, classes=plain.classes, temperature=4.0)
    [e] = explain_examples(calibrated, examples, [examples[0].id])
    [row] = calibrated.predict_proba(examples[:1])
    # the example alone vs in a batch of 1 through the loader: the same model, float32 logits, float64 softmax
    assert e.probabilities == pytest.approx(dict(zip(calibrated.classes, row.tolist(), strict=True)), abs=1e-6)
    [raw] = explain_examples(plain, examples, [examples[0].id])
    assert abs(raw.probability - e.probability) > 1e-3  # the temperature moved it: the check above means something


def test_another_occlusion_grid_can_be_asked_for(examples: list[Example]) -> None:
    [e] = explain_examples(_predictor("concat", "resnet"), examples, [examples[0].id], grid=(3, 5))
    assert e.grid == (3, 5) and np.any(e.region_contributions != 0.0)
    with pytest.raises(ValueError, match="two positive ints"):
        explain_examples(_predictor("concat", "resnet"), examples, [examples[0].id], grid=(0, 5))


def test_a_missing_image_is_the_blank_of_predict_and_its_regions_contribute_zero(
    examples: list[Example], tmp_path: Path
) -> None:
    gone = Example("gone", examples[0].text, tmp_path / "missing.png", examples[0].label)
    predictor = _predictor("concat", "resnet")
    [e] = explain_examples(predictor, [gone], ["gone"])
    assert not e.image_present
    assert np.all(e.region_contributions == 0.0) and e.image_contribution == 0.0
    assert any("blank" in n for n in e.notes)
    # the same probability as predict, which stands the same blank in for the missing image
    proba = predictor.predict_proba([gone], max_missing_images=1.0)[0]
    assert e.probability == pytest.approx(float(proba.max()), abs=1e-5)  # batch of 1 both ways; float order only


def test_cross_attention_gives_each_word_its_attention_over_the_regions(examples: list[Example]) -> None:
    words = ["the", "dog", "is", "happy", "at", "night", "and", "the", "cat", "is", "sad"]
    item = Example("w", " ".join(words), examples[0].image, "0")
    # max_length 6: [CLS] + 4 tokens + [SEP], so the words after the fourth never reach the model
    [e] = explain_examples(_predictor("cross_attention", "clip", max_length=6), [item], ["w"])
    assert e.word_attention is not None and e.attention is not None
    assert e.word_attention.shape == (len(words), 4, 4)
    assert e.words_read.tolist() == [True] * 4 + [False] * (len(words) - 4)
    sums = e.word_attention.sum(axis=(1, 2))
    # each read word's row: the mean of softmax rows (float32) summing to 1
    np.testing.assert_allclose(sums[:4], 1.0, atol=1e-5)
    assert np.all(e.word_attention[4:] == 0.0)
    assert np.all(e.word_contributions[4:] == 0.0)  # dropping them leaves the model's input as it was
    np.testing.assert_allclose(e.attention.sum(), 1.0, atol=1e-9)
    assert any("never reached the model" in n and "'night'" in n for n in e.notes)


def test_word_token_spans_cover_each_words_tokens() -> None:
    encoder = tiny_text_encoder()
    words = ["Hello,", "dog", "xyz!", "night"]
    spans = word_token_spans(encoder.tokenize, words)
    ids = encoder.tokenize([" ".join(words)])["input_ids"][0].tolist()
    tokens = encoder.tokenizer.convert_ids_to_tokens(ids)
    pieces = ["".join(t.removeprefix("##") for t in tokens[a:b]) for a, b in spans]
    assert pieces == [w.lower() for w in words]
    assert tokens[0] == "[CLS]" and spans[0][0] == 1 and spans[-1][1] == len(tokens) - 1


def test_unknown_ids_are_an_error_naming_them(examples: list[Example]) -> None:
    with pytest.raises(UnknownIdsError, match=r"'nope', 'also-nope'") as info:
        explain_examples(_predictor("text_only"), examples, [examples[0].id, "nope", "also-nope"])
    assert isinstance(info.value, ValueError) and info.value.ids == ["nope", "also-nope"]
    with pytest.raises(ValueError, match="no ids"):
        explain_examples(_predictor("text_only"), examples, [])


# ----------------------------------------------------------------------------------------- a model that learnt


_KEYWORDS = ("day", "night")


def _keyword_examples(root: Path, split: str) -> list[Example]:
    """The synthetic captions with their time phrase ("the midday sun", "a frosty night sky") replaced by one word,
    day or night, and labelled by it: that word alone decides the label."""
    from mmfuse.data import synthetic

    out = []
    for line in (root / f"{split}.jsonl").read_text().splitlines():
        row = json.loads(line)
        concept = 0 if any(p in row["text"] for p in synthetic._TIMES[0]) else 1
        phrase = next(p for p in synthetic._TIMES[concept] if p in row["text"])
        text = row["text"].replace(phrase, _KEYWORDS[concept])
        out.append(Example(str(row["id"]), text, root / row["img"], _KEYWORDS[concept]))
    return out


@pytest.mark.slow
def test_the_decisive_word_has_the_largest_contribution_once_learnt(tmp_path: Path) -> None:
    from mmfuse.config import validate_config
    from mmfuse.engine.classifier import MultimodalClassifier

    root = make_synthetic(tmp_path / "data", n=200, seed=3)
    train, val = _keyword_examples(root, "train"), _keyword_examples(root, "dev")
    config = {
        "model": {
            "text_encoder": {"name": str(tiny_bert_dir()), "freeze": False, "options": {"pooling": "mean"}},
            "image_encoder": None,
            "head": {"name": "text_only", "params": {"hidden": 32}},
        },
        "optim": {"lr": 3e-3, "encoder_lr": 3e-3},
        "train": {"epochs": 12, "batch_size": 16, "seed": 0},
        "run": {"quiet": True, "out_dir": str(tmp_path / "runs"), "name": "keyword"},
    }
    clf = MultimodalClassifier(validate_config(config)).fit(train, val)
    assert clf.evaluate(val)["metrics"]["accuracy"] >= 0.9  # it learnt the rule
    found = clf.explain(val, [e.id for e in val])
    keyword = [[w.strip(",") in _KEYWORDS for w in e.words] for e in found]
    top = [int(e.word_contributions.argmax()) for e in found]
    # A model may learn one keyword and read its absence as the other class ("no day: night"): then only the first
    # keyword decides. For every example of at least one class the keyword has the largest contribution...
    by_class = {c: [keyword[i][top[i]] for i, e in enumerate(found) if e.label == c] for c in _KEYWORDS}
    assert any(rows and all(rows) for rows in by_class.values()), by_class
    # ... and over all examples a keyword contributes more on average than any other word seen 3 times or more
    # (the mean of one or two occurrences is noise)
    means: dict[str, list[float]] = {}
    for e in found:
        for w, c in zip(e.words, e.word_contributions, strict=True):
            means.setdefault(w.strip(","), []).append(float(c))
    ranked = sorted((w for w in means if len(means[w]) >= 3), key=lambda w: -np.mean(means[w]))
    assert ranked[0] in _KEYWORDS, ranked[:5]
