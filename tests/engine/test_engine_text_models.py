"""The new text models through the public API: a config naming a saved tiny DeBERTa-v3 / CLIP / SigLIP folder as
``model.text_encoder.name`` trains, predicts, saves and loads with MultimodalClassifier (real builders, no fakes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _engine_support import make_config

from _tiny import tiny_clip_vision_dir
from _tiny_text import tiny_text_dir
from mmfuse.engine.classifier import MultimodalClassifier


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("text_kind", "head", "encoder"),
    [
        ("deberta-v3", "early_fusion", {"freeze": True, "trainable_top_k": 1, "options": {"pooling": "mean"}}),
        ("clip", "concat", {"freeze": True}),
        ("siglip-text", "cross_attention", {"freeze": True, "options": {"max_length": 12}}),
    ],
)
def test_fit_predict_save_load(
    text_kind: str, head: str, encoder: dict, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    model = {
        "text_encoder": {"name": str(tiny_text_dir(text_kind)), **encoder},
        "image_encoder": {"name": str(tiny_clip_vision_dir())},
        "head": head,
    }
    cfg = make_config(synthetic_root, tmp_path, model=model, train={"epochs": 1})
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    test = synthetic_splits["test"]
    proba = clf.predict_proba(test)
    assert proba.shape == (len(test.examples), 2) and np.isfinite(proba).all()
    # one example alone or in a padded batch: float rounding only (<= 1e-6 measured)
    np.testing.assert_allclose(clf.predict_proba(test.examples[:1]), proba[:1], atol=1e-5)
    loaded = MultimodalClassifier.load(clf.save(tmp_path / "model"))
    # the same weights and code: float rounding of another batch composition at most (0 measured)
    np.testing.assert_allclose(loaded.predict_proba(test), proba, atol=1e-6)
