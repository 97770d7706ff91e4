"""A transformers vision backbone through the public API: a run trained with ``model.image_encoder`` = a folder made
with ``save_pretrained`` (a tiny ViT whose 4×16 px patches give an 8×2 grid on square images), its frozen features
cached with their grid, and the predictions of the loaded run laid out on that grid (a guess from 16 regions of a
square image would say 4×4)."""

from __future__ import annotations

from pathlib import Path

from _engine_support import make_config

from _tiny import tiny_bert_dir
from _tiny_vision import tiny_tall_grid_dir
from mmfuse import MultimodalClassifier
from mmfuse.data import DataConfig, load_splits, make_synthetic


def test_a_run_on_a_vision_backbone_predicts_on_its_grid(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "data", n=40, seed=3, image_size=32)
    config = make_config(
        root,
        tmp_path / "runs",
        model={
            "text_encoder": {"name": str(tiny_bert_dir())},
            "image_encoder": {"name": str(tiny_tall_grid_dir())},  # frozen (the default): features cached
            "head": {"name": "cross_attention"},
        },
        cache={"dir": str(tmp_path / "cache")},
    )
    clf = MultimodalClassifier(config).fit()
    assert clf.summary["status"] == "completed"

    loaded = MultimodalClassifier.load(clf.run_dir.path)
    test = load_splits(DataConfig(root=root, preset="hateful_memes"))["test"]
    predictions = loaded.predict_details(test)
    assert len(predictions) == len(test.examples)
    assert {p.attention.shape for p in predictions} == {(8, 2)}
