"""A Hugging Face text encoder holds each weight once in its state dict (its layer stack used to be registered twice:
under ``model.`` and again under ``_layers.``), and checkpoints saved with the old double registration still load,
to the same predictions: a fine-tuned encoder's weights stored twice, and a LoRA checkpoint whose recorded base
weights hash counted the layers twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from _tiny_text import TEXT_KINDS, tiny_text_dir
from mmfuse import MultimodalClassifier
from mmfuse.config import validate_config
from mmfuse.encoders import build_text_encoder


@pytest.mark.parametrize("kind", list(TEXT_KINDS))
def test_a_text_encoder_holds_each_weight_once(kind: str) -> None:
    encoder = build_text_encoder(str(tiny_text_dir(kind)))
    state = encoder.state_dict()
    storages = {t.untyped_storage().data_ptr() for t in state.values() if t.numel()}
    assert len(storages) == sum(1 for t in state.values() if t.numel())  # no weight under two names
    assert not [k for k in state if k.startswith("_layers.")]
    assert encoder.num_layers >= 1  # the layer stack is still found (trainable_top_k counts it)


def _fit(root: Path, out: Path, splits: dict, text: dict, name: str) -> MultimodalClassifier:
    cfg = {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": {"text_encoder": text, "image_encoder": str(tiny_clip_vision_dir()), "head": "concat"},
        "optim": {"lr": 1e-2, "encoder_lr": 1e-2},
        "train": {"epochs": 1, "batch_size": 16, "seed": 0, "device": "cpu"},
        "run": {"out_dir": str(out), "name": name, "quiet": True},
    }
    return MultimodalClassifier(validate_config(cfg)).fit(splits["train"], splits["val"])


@pytest.mark.parametrize(
    "text",
    [
        pytest.param({"trainable_top_k": 1}, id="fine-tuned"),
        pytest.param({"lora": {"r": 2}}, id="lora", marks=pytest.mark.skipif(
            __import__("importlib").util.find_spec("peft") is None, reason="LoRA needs the lora extra (peft)")),
    ],
)  # fmt: skip
def test_a_checkpoint_saved_with_the_layers_twice_still_loads(
    text: dict, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    clf = _fit(synthetic_root, tmp_path, synthetic_splits, {"name": str(tiny_bert_dir()), **text}, "run")
    test = synthetic_splits["test"]
    expected = clf.predict_proba(test)
    new = clf.save(tmp_path / "new")
    assert not [k for k in load_file(str(new / "model.safetensors")) if "._layers." in k]  # each weight once
    encoder = clf.predictor().model.text_encoder
    encoder.add_module("_layers", vars(encoder).pop("_layers"))  # registered again, as older versions did, and saved
    old = clf.save(tmp_path / "old")
    stored = load_file(str(old / "model.safetensors"))
    assert [k for k in stored if k.startswith("text_encoder._layers.")]  # the old format: the layers twice
    recorded = json.loads((old / "meta.json").read_text())["encoders"]["text"]
    if "lora" in text:  # the old hash counted the layers twice: not today's hash of the same weights
        assert (
            recorded["base_weights"] != json.loads((new / "meta.json").read_text())["encoders"]["text"]["base_weights"]
        )
    for folder in (old, new):
        # the same weights in the same ops: the same probabilities, bit for bit
        np.testing.assert_array_equal(MultimodalClassifier.load(folder).predict_proba(test), expected)
