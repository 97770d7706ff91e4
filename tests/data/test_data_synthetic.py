"""make_synthetic: deterministic, balanced, loadable, and the label needs both modalities."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from mmfuse.data import DataConfig, load_splits, make_synthetic
from mmfuse.data.synthetic import _TIMES

CHANCE_CEILING = 0.62  # 180 held-out examples: chance is 0.5 +- 0.037, so this is ~3 standard deviations above


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), n=600, seed=0)


def _rows(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def _features(root: Path, rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Texts, 4x4 mean-colour image features in [0, 1], labels."""
    images = [
        np.asarray(Image.open(root / r["img"]).resize((4, 4), Image.Resampling.BOX), dtype=np.float64) for r in rows
    ]
    return (
        [r["text"] for r in rows],
        np.stack(images).reshape(len(rows), -1) / 255,
        np.array([r["label"] for r in rows]),
    )


def test_deterministic_bytes_for_a_seed(tmp_path: Path) -> None:
    first = _digest(make_synthetic(tmp_path / "a", n=60, seed=3))
    assert first == _digest(make_synthetic(tmp_path / "b", n=60, seed=3))
    assert first != _digest(make_synthetic(tmp_path / "c", n=60, seed=4))
    assert len(first) == 60 + 3


def test_layout_splits_and_balance(synthetic: Path) -> None:
    splits = {name: _rows(synthetic, name) for name in ("train", "dev", "test")}
    assert {n: len(r) for n, r in splits.items()} == {"train": 420, "dev": 88, "test": 92}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert len(set(ids)) == 600 and all(isinstance(i, int) for i in ids)
    for rows in splits.values():
        labels = Counter(r["label"] for r in rows)
        assert set(labels) == {0, 1} and abs(labels[0] - labels[1]) <= 2
        assert all((synthetic / r["img"]).is_file() and r["img"] == f"img/{r['id']}.png" for r in rows)
        assert Image.open(synthetic / rows[0]["img"]).size == (112, 112)


def test_label_is_xor_and_every_concept_meets_both(synthetic: Path) -> None:
    rows = _rows(synthetic, "train") + _rows(synthetic, "dev") + _rows(synthetic, "test")
    texts, images, labels = _features(synthetic, rows)
    night = np.array([any(t in text for t in _TIMES[1]) for text in texts])
    day = np.array([any(t in text for t in _TIMES[0]) for text in texts])
    assert (night ^ day).all()  # each caption has exactly one concept
    brightness = images.mean(axis=1)
    dark = brightness < 0.5
    assert brightness[dark].max() < 0.4 < 0.55 < brightness[~dark].min()  # the image concept is unmistakable
    assert (labels == (night != dark)).all()
    cells = Counter(zip(night.tolist(), dark.tolist(), strict=True))
    assert len(cells) == 4 and max(cells.values()) - min(cells.values()) <= 4


def test_one_modality_alone_is_near_chance_both_together_are_not(synthetic: Path) -> None:
    train_texts, train_images, y_train = _features(synthetic, _rows(synthetic, "train"))
    held = _rows(synthetic, "dev") + _rows(synthetic, "test")
    test_texts, test_images, y_test = _features(synthetic, held)
    vectorizer = CountVectorizer(binary=True).fit(train_texts)
    bow_train, bow_test = vectorizer.transform(train_texts).toarray(), vectorizer.transform(test_texts).toarray()

    def accuracy(x_train: np.ndarray, x_test: np.ndarray) -> float:
        model = LogisticRegression(max_iter=5000).fit(x_train, y_train)
        return float(model.score(x_test, y_test))

    def interaction(bow: np.ndarray, image: np.ndarray) -> np.ndarray:
        return np.hstack([bow, image, np.einsum("nb,ni->nbi", bow, image).reshape(len(bow), -1)])

    text_only = accuracy(bow_train, bow_test)
    image_only = accuracy(train_images, test_images)
    concatenated = accuracy(np.hstack([bow_train, train_images]), np.hstack([bow_test, test_images]))
    fused = accuracy(interaction(bow_train, train_images), interaction(bow_test, test_images))
    assert text_only < CHANCE_CEILING, text_only
    assert image_only < CHANCE_CEILING, image_only
    assert concatenated < CHANCE_CEILING, concatenated  # a linear model cannot do XOR without an interaction
    assert fused > 0.95, fused


def test_loads_through_the_hateful_memes_preset(synthetic: Path) -> None:
    splits = load_splits(DataConfig(root=synthetic, preset="hateful_memes"))
    assert [len(s) for s in splits.values()] == [420, 88, 92]
    for split in splits.values():
        assert split.report.usable and not split.report.problem_lists()
        assert set(split.report.label_counts) == {"0", "1"}


def test_refuses_too_few_examples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 40"):
        make_synthetic(tmp_path, n=10)
