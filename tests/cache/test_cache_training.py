"""Training from cached features gives the results of encoding on the fly (same config, same seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _tiny import tiny_bert_dir, tiny_resnet_dir
from mmfuse.cache import FeatureCache
from mmfuse.config import config_from
from mmfuse.engine.classifier import MultimodalClassifier


def _fit(
    tmp_path: Path, splits: dict, head: str, params: dict[str, Any], *, enabled: bool, source: FeatureCache, name: str
) -> tuple[np.ndarray, np.ndarray]:
    cfg = config_from(
        head=head,
        text_encoder=str(tiny_bert_dir()),
        image_encoder=str(tiny_resnet_dir()),
        epochs=2,
        batch_size=8,
        **{
            "model.head.params": params,
            "cache.enabled": enabled,
            "train.device": "cpu",
            "train.seed": 0,
            "run.out_dir": str(tmp_path / "runs"),
            "run.name": name,
            "run.quiet": True,
        },
    )
    clf = MultimodalClassifier(cfg, source=source).fit(splits["train"], splits["val"])
    losses = np.array([[r["train_loss"], r["val"]["loss"]] for r in clf.history])
    return losses, clf.predict_proba(splits["test"])


@pytest.mark.numerics
@pytest.mark.parametrize(
    ("head", "params"),
    [("concat", {"hidden": 32}), ("cross_attention", {"dim": 32, "num_heads": 2, "hidden": 32})],
    ids=["pooled", "sequence+grid"],
)
def test_cached_training_matches_encoding_every_batch(
    tmp_path: Path, synth_splits: dict, head: str, params: dict[str, Any]
) -> None:
    cold_source, warm_source, raw_source = (FeatureCache(tmp_path / "cache", encode_workers=0) for _ in range(3))
    cold = _fit(tmp_path, synth_splits, head, params, enabled=True, source=cold_source, name="cold")
    warm = _fit(tmp_path, synth_splits, head, params, enabled=True, source=warm_source, name="warm")
    raw = _fit(tmp_path, synth_splits, head, params, enabled=False, source=raw_source, name="raw")

    assert cold_source.stats.computed > 0
    assert warm_source.stats.computed == 0 and warm_source.stats.loaded > 0  # read back from disk, no encoder run
    assert raw_source.stats.requests == raw_source.stats.memo_hits == 0  # encoders ran inside the model
    # cold and warm read the same stored features (sequences and grids float16, the default): identical training
    np.testing.assert_array_equal(cold[0], warm[0])
    np.testing.assert_array_equal(cold[1], warm[1])
    # on the fly: the same features up to float rounding (other batch compositions and padding), which two epochs of
    # AdamW carry into losses and probabilities <= 8e-9 apart (measured with float32 storage, vector and scalar
    # kernels), plus float16's rounding of the stored sequences: <= 3.2e-7 / 8.1e-7 on this same model (measured in
    # test_cache_storage.py's float16-vs-float32 test, both kernels); 1e-5 is a wide margin, and features from
    # another encoder or example would move them by far more
    np.testing.assert_allclose(raw[0], cold[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(raw[1], cold[1], rtol=0, atol=1e-5)


def test_runs_use_the_configured_disk_cache(tmp_path: Path, synth_splits: dict) -> None:
    """``cache.dir`` in the config: the first run fills the folder, a second run (another head) only reads it."""
    from mmfuse.cache import source

    def fit(head: str, name: str) -> MultimodalClassifier:
        cfg = config_from(
            head=head,
            text_encoder=str(tiny_bert_dir()),
            image_encoder=str(tiny_resnet_dir()),
            epochs=1,
            batch_size=8,
            **{"cache.dir": str(tmp_path / "cache"), "train.device": "cpu", "run.out_dir": str(tmp_path / "runs")},
            **{"run.name": name, "run.quiet": True},
        )
        return MultimodalClassifier(cfg).fit(synth_splits["train"], synth_splits["val"])

    first = fit("concat", "a")
    assert isinstance(first.source, FeatureCache) and first.source.root == tmp_path / "cache"
    computed = first.source.stats.computed
    assert computed > 0 and any((tmp_path / "cache").rglob("*.safetensors"))
    source._SHARED.clear()  # a new process: nothing in memory
    second = fit("align", "b")
    assert second.source is not first.source
    assert second.source.stats.computed == 0 and second.source.stats.loaded > 0


def test_cache_off_and_disabled_use_the_process_memo(tmp_path: Path) -> None:
    from mmfuse.cache import source_for
    from mmfuse.features import FeatureStore

    assert isinstance(source_for(True, "off"), FeatureStore)
    assert isinstance(source_for(False, str(tmp_path)), FeatureStore)
    assert source_for(True, str(tmp_path)) is source_for(True, str(tmp_path))  # one cache per folder and process
