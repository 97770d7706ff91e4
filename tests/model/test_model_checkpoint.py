"""A saved model describes itself (meta.json: the model spec, not the training config), loads without the trainer,
and checkpoints of the previous format (the whole config in meta.json) still load to the same predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from _serve_runs import make_checkpoint
from PIL import Image

import mmfuse

SRC = Path(mmfuse.__file__).resolve().parents[1]  # the mmfuse under test, for the subprocess


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model"))


def _request(predictor):
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (30, 40), (20, 90, 200))]
    return predictor.predict(["a red square", "something blue"], [predictor.prepare_image(i) for i in images])


def test_meta_holds_the_model_spec_not_the_training_config(checkpoint):
    meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    assert meta["format_version"] == 2
    assert "config" not in meta  # no optimizer, data or loop settings in a saved model
    assert meta["model"]["head"]["name"] == "cross_attention"
    assert meta["classes"] == ["benign", "hateful"] and meta["threshold"] == 0.4
    assert set(meta["encoders"]) == {"text", "image"}  # identities: preprocessing, tokenizer, weights
    assert "preprocess" in meta["encoders"]["image"]["identity"]


def test_a_checkpoint_of_format_1_loads_to_the_same_model(checkpoint, tmp_path):
    """Format 1 (mmfuse before the model spec) kept the whole training config in meta.json under ``config``."""
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.model import TorchPredictor

    old = tmp_path / "old"
    old.mkdir()
    for name in ("model.safetensors", "label_map.json"):
        (old / name).write_bytes((checkpoint / name).read_bytes())
    meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    config = yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8"))
    v1 = {"format_version": 1, "config": config, "classes": meta["classes"], "threshold": meta["threshold"],
          "train_class_counts": meta["train_class_counts"], "encoders": meta["encoders"]}  # fmt: skip
    (old / "meta.json").write_text(json.dumps(v1), encoding="utf-8")  # and no config.yaml beside it

    new_p, old_p = TorchPredictor.from_run(checkpoint), TorchPredictor.from_run(old)
    assert [p.to_dict() for p in _request(old_p)] == [p.to_dict() for p in _request(new_p)]
    assert old_p.info() | {"source": None} == new_p.info() | {"source": None}
    clf = MultimodalClassifier.load(old)
    assert clf.config.to_dict() == MultimodalClassifier.load(checkpoint).config.to_dict()
    assert clf.threshold == 0.4 and clf.classes == ["benign", "hateful"]


def test_a_newer_format_is_refused_with_what_to_do(checkpoint, tmp_path):
    from mmfuse.model import CheckpointError, TorchPredictor

    folder = tmp_path / "future"
    folder.mkdir()
    meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    (folder / "meta.json").write_text(json.dumps({**meta, "format_version": 99}), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"format version 99.*upgrade mmfuse"):
        TorchPredictor.from_run(folder)


def test_classifier_server_and_predictor_give_the_same_predictions(checkpoint):
    """One inference path: MultimodalClassifier.predict_details, TorchPredictor on examples and the server's
    request path agree (labels at the tuned threshold, probabilities, attention grids)."""
    from mmfuse.data.example import Example
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.model import TorchPredictor

    folder = checkpoint.parent / "images"
    folder.mkdir(exist_ok=True)
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 90, 200))]
    texts = ["a red square", "something blue"]
    examples = []
    for i, (text, image) in enumerate(zip(texts, images, strict=True)):
        image.save(folder / f"{i}.png")
        examples.append(Example(id=str(i), text=text, image=folder / f"{i}.png"))
    clf = MultimodalClassifier.load(checkpoint)
    details = clf.predict_details(examples, threshold=clf.threshold)
    predictor = TorchPredictor.from_run(checkpoint)
    served = predictor.predict(texts, [predictor.prepare_image(Image.open(folder / f"{i}.png")) for i in range(2)])
    assert [d.id for d in details] == ["0", "1"] and all(d.image_present for d in details)
    for d, s, d_text in zip(details, served, texts, strict=True):
        assert d.label == s.label and d.attention.shape == s.attention.shape == (4, 4)
        # the same model on the same pixels and tokens, batched alike: the same floats up to float32 rounding
        assert np.allclose(list(d.probabilities.values()), list(s.probabilities.values()), rtol=0, atol=1e-6)
        assert np.allclose(d.attention, s.attention, rtol=0, atol=1e-6)
        # the per-token maps the grid averages: one row per valid token (no padding rows), each a distribution
        # over the 16 regions; their renormalised mean is the grid (float32 softmax rows sum to 1 within 1e-6)
        tokens = d.token_attention
        n_tokens = int(predictor.model.text_encoder.tokenize([d_text])["attention_mask"].sum())
        assert tokens.shape == (n_tokens, 16)
        assert np.allclose(tokens.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        mean = tokens.astype(np.float64).mean(axis=0)
        assert np.allclose(mean / mean.sum(), d.attention.reshape(-1), rtol=0, atol=1e-6)
        # the request path keeps the same rows (the server's word maps are made of them); same floats as above
        assert s.token_attention.shape == tokens.shape
        assert np.allclose(s.token_attention, tokens, rtol=0, atol=1e-6)


_PROBE = """
import json, sys
banned = ("accelerate", "mmfuse.engine.trainer")
def loaded():
    return sorted(m for m in sys.modules if m in banned or m.startswith(tuple(b + "." for b in banned)))
import mmfuse.export, mmfuse.export.onnx_export, mmfuse.export.runtime
import mmfuse.serve, mmfuse.serve.app, mmfuse.serve.loading
imported = loaded()
from mmfuse.export.onnx_export import checkpoint_digest
from mmfuse.serve import load_predictor
predictor = load_predictor(sys.argv[1])
predictor.warmup()
checkpoint_digest(sys.argv[1])
print(json.dumps({"imported": imported, "served": [m for m in loaded() if m.startswith("mmfuse.")]}))
"""


def test_serving_a_checkpoint_imports_no_trainer(checkpoint):
    """Importing the server and the exporter loads neither the training loop nor accelerate, and loading and
    running a model to serve it does not load the training loop (transformers itself may import accelerate when
    it loads an encoder, so that is not checked past the imports)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _PROBE, str(checkpoint)], capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"imported": [], "served": []}
