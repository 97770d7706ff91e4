"""Heads trained on features made elsewhere (``precomputed`` encoders) through the public API and the CLI: a head
learns from a Parquet of vectors, missing ids are counted and named (an error past the share), the checkpoint
reloads to the same predictions, and serving or exporting such a model is refused with what to do instead."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from mmfuse import MultimodalClassifier
from mmfuse.cli import app
from mmfuse.config import validate_config
from mmfuse.encoders.precomputed import MissingFeaturesError, MissingFeaturesWarning
from mmfuse.features import plan_features

pytest.importorskip("pyarrow", reason="Parquet feature files need pyarrow")


def _examples(splits: dict) -> list:
    return [e for name in ("train", "val", "test") for e in splits[name].examples]


def _write_features(path: Path, examples: list, *, drop: set[str] = frozenset(), seed: int = 0) -> Path:
    """One 16-d vector per example whose first 4 values carry the label (+-3), and 3 token vectors of 8."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in examples:
        if e.id in drop:
            continue
        v = rng.normal(size=16)
        v[:4] += 3.0 * (2 * int(e.label) - 1)
        rows.append({"id": e.id, "pooled": v.tolist(), "sequence": rng.normal(size=(3, 8)).tolist()})
    pd.DataFrame(rows).to_parquet(path)
    return path


def _config(root: Path, out: Path, text: dict, *, head: str = "text_only", image=None, name: str = "pre") -> dict:
    return {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": {"text_encoder": text, "image_encoder": image, "head": head},
        "optim": {"lr": 1e-2},
        "train": {"epochs": 8, "batch_size": 16, "seed": 0, "device": "cpu"},
        "run": {"out_dir": str(out), "name": name, "quiet": True},
    }


@pytest.fixture(scope="module")
def features(synthetic_splits: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_features(tmp_path_factory.mktemp("features") / "feats.parquet", _examples(synthetic_splits))


@pytest.fixture(scope="module")
def trained(features: Path, synthetic_root: Path, synthetic_splits: dict, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pre_runs")
    cfg = validate_config(_config(synthetic_root, out, {"name": "precomputed", "options": {"path": str(features)}}))
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    return clf, out / "pre"


@pytest.mark.numerics
def test_a_head_learns_from_a_parquet_of_vectors_and_reloads(trained, synthetic_splits: dict) -> None:
    clf, run = trained
    test = synthetic_splits["test"]
    result = clf.evaluate(test)
    # the label sits 6 standard deviations apart in 4 of the 16 values: a linear head separates it
    assert result["metrics"]["auroc"] == 1.0
    assert plan_features(clf.predictor().model, precompute=False).text == "pooled"  # looked up even without a cache
    again = MultimodalClassifier.load(run)
    np.testing.assert_array_equal(again.predict_proba(test), clf.predict_proba(test))  # same weights, same ops


def test_sequence_heads_read_the_files_token_vectors(features: Path, synthetic_root: Path, synthetic_splits, tmp_path):
    text = {"name": "precomputed", "options": {"path": str(features)}}
    image = {"name": str(tiny_clip_vision_dir())}
    cfg = _config(synthetic_root, tmp_path, text, head="cross_attention", image=image)
    cfg["train"]["epochs"] = 1
    clf = MultimodalClassifier(validate_config(cfg)).fit(synthetic_splits["train"], synthetic_splits["val"])
    plan = plan_features(clf.predictor().model)
    assert (plan.text, plan.image) == ("sequence", "grid")
    table = clf.predictor().features.get(clf.predictor().model.text_encoder, synthetic_splits["test"].examples,
                                         need_sequence=True)  # fmt: skip
    assert table.batch([0]).sequence.shape == (1, 3, 8)  # the file's 3 token vectors of 8 values
    assert clf.predict_proba(synthetic_splits["test"]).shape == (len(synthetic_splits["test"]), 2)


def test_missing_ids_are_counted_named_and_past_the_share_an_error(
    synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    val = synthetic_splits["val"].examples
    dropped = {val[0].id, val[1].id}
    path = _write_features(tmp_path / "partial.parquet", _examples(synthetic_splits), drop=dropped)
    strict = _config(synthetic_root, tmp_path, {"name": "precomputed", "options": {"path": str(path)}}, name="a")
    with pytest.raises(MissingFeaturesError, match=rf"2 of {len(val)} examples .* have no row in text feature file"):
        MultimodalClassifier(validate_config(strict)).fit(synthetic_splits["train"], synthetic_splits["val"])
    options = {"path": str(path), "max_missing": 0.5}
    lenient = _config(synthetic_root, tmp_path, {"name": "precomputed", "options": options}, name="b")
    lenient["train"]["epochs"] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MultimodalClassifier(validate_config(lenient)).fit(synthetic_splits["train"], synthetic_splits["val"])
    messages = [str(w.message) for w in caught if issubclass(w.category, MissingFeaturesWarning)]
    assert len(messages) == 1 and all(repr(i) in messages[0] for i in dropped)


def test_cli_trains_from_a_config_whose_feature_file_is_relative_to_it(
    features: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "feats.parquet").write_bytes(features.read_bytes())
    cfg = _config(synthetic_root, tmp_path / "runs", {"name": "precomputed", "options": {"path": "feats.parquet"}})
    cfg["train"]["epochs"] = 1
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "pre"
    out = tmp_path / "predictions.csv"
    predicted = CliRunner().invoke(app, ["predict", str(run), str(synthetic_root / "test.jsonl"), "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    assert len(pd.read_csv(out)) == len(pd.read_json(synthetic_root / "test.jsonl", lines=True))


def test_serving_or_exporting_a_precomputed_model_is_refused(trained) -> None:
    _, run = trained
    for args in (["serve", str(run)], ["export", str(run), "--format", "onnx"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "its text encoder is precomputed" in result.output and "cannot read raw text" in result.output


def test_a_changed_feature_file_is_refused_at_load(trained, features: Path, tmp_path: Path) -> None:
    import shutil

    from mmfuse.model.checkpoint import CheckpointError, load_model

    _, run = trained
    folder = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoints" / "best", folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["encoders"]["text"]["fingerprint"] = "0" * 16  # as if the file had other content at training
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"text encoder 'precomputed' .* differs from the one it was"):
        load_model(folder)


def test_a_precomputed_image_grid_reaches_the_head_and_the_attention_maps(
    synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    """``options.grid`` of a precomputed image file: the features carry it to the head (cross_attention here) and
    each prediction's attention map is laid out on it."""
    rng = np.random.default_rng(0)
    rows = [{"id": e.id, "pooled": rng.normal(size=8).tolist(), "sequence": rng.normal(size=(6, 8)).tolist()}
            for e in _examples(synthetic_splits)]  # fmt: skip
    path = tmp_path / "regions.parquet"
    pd.DataFrame(rows).to_parquet(path)
    image = {"name": "precomputed", "options": {"path": str(path), "grid": [3, 2]}}
    cfg = _config(synthetic_root, tmp_path, {"name": str(tiny_bert_dir())}, head="cross_attention", image=image)
    cfg["train"]["epochs"] = 1
    clf = MultimodalClassifier(validate_config(cfg)).fit(synthetic_splits["train"], synthetic_splits["val"])
    model = clf.predictor().model
    table = clf.predictor().features.get(model.image_encoder, synthetic_splits["test"].examples, need_sequence=True)
    assert table.batch([0, 1]).grid == (3, 2)
    predictions = clf.predict_details(synthetic_splits["test"].examples[:2])
    assert [p.to_dict()["attention"]["grid"] for p in predictions] == [[3, 2], [3, 2]]
