"""LoRA fine-tuning through the public API: ``model.<modality>_encoder.lora`` trains only the adapters (and the head),
the base weights end bit-identical, the checkpoint holds only adapter and head weights, and loading it rebuilds base
plus adapters to the same predictions. Contradictory encoder settings are config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _tiny import tiny_bert_dir, tiny_clip_vision_dir
from mmfuse import MultimodalClassifier
from mmfuse.config import ConfigError, validate_config
from mmfuse.encoders.lora import is_adapter_key
from mmfuse.model.build import build_encoder

pytest.importorskip("peft", reason="LoRA needs the lora extra (peft)")


def _config(root: Path, out: Path, text: dict, image: dict, **train) -> dict:
    return {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": {"text_encoder": text, "image_encoder": image, "head": "concat"},
        "optim": {"lr": 3e-3, "encoder_lr": 1e-2},  # a large adapter lr so the adapters move visibly in 2 epochs
        "train": {"epochs": 2, "batch_size": 16, "seed": 0, "device": "cpu", **train},
        "run": {"out_dir": str(out), "name": "lora", "quiet": True},
    }


@pytest.fixture(scope="module")
def trained(synthetic_root: Path, synthetic_splits: dict, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("lora_runs")
    text = {"name": str(tiny_bert_dir()), "lora": {"r": 4, "alpha": 8, "target": ["query", "value"]}}
    image = {"name": str(tiny_clip_vision_dir()), "lora": {"r": 2}}
    cfg = validate_config(_config(synthetic_root, out, text, image))
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    return clf, cfg, out / "lora"


def _model(clf: MultimodalClassifier) -> torch.nn.Module:
    return clf.predictor().model


def test_only_adapters_and_head_train_and_the_base_stays_bit_identical(trained) -> None:
    clf, cfg, _ = trained
    model = _model(clf)
    for modality in ("text", "image"):
        encoder = getattr(model, f"{modality}_encoder")
        trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
        assert trainable and all(is_adapter_key(n) for n in trainable)
        fresh = build_encoder(modality, getattr(cfg.model, f"{modality}_encoder"))  # base + untrained adapters
        trained_state, fresh_state = encoder.state_dict(), fresh.state_dict()
        assert trained_state.keys() == fresh_state.keys()
        for name, value in trained_state.items():
            if is_adapter_key(name):
                continue
            assert torch.equal(value, fresh_state[name]), f"base weight {name} changed in training"
        # the adapters did train (LoRA's B starts at zero)
        moved = [n for n in trained_state if ".lora_B." in n and trained_state[n].abs().sum() > 0]
        assert moved, f"no {modality} adapter moved"


def test_checkpoint_holds_only_adapter_and_head_weights(trained) -> None:
    clf, _, run = trained
    stored = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    model = _model(clf)
    head = {n for n in model.state_dict() if not n.startswith(("text_encoder.", "image_encoder."))}
    encoders = ("text_encoder.", "image_encoder.")
    adapters = {n for n in model.state_dict() if n.startswith(encoders) and is_adapter_key(n)}
    assert set(stored) == head | adapters
    # distinct adapter tensors: tiny BERT 2 layers x (query, value) x (A, B), tiny CLIP vision 2 x (q_proj, v_proj) x
    # (A, B) (the state dict may name a tensor twice: HFTextEncoder keeps its layer stack as a second attribute)
    distinct = {n for n, _ in model.named_parameters() if n.startswith(encoders) and is_adapter_key(n)}
    assert len(distinct) == 8 + 8 and distinct <= set(stored)


@pytest.mark.numerics
def test_reloaded_run_rebuilds_base_and_adapters_to_the_same_predictions(trained, synthetic_splits: dict) -> None:
    clf, _, run = trained
    test = synthetic_splits["test"]
    again = MultimodalClassifier.load(run)
    # the same weights and the same ops on the same CPU: identical, not merely close
    np.testing.assert_array_equal(again.predict_proba(test), clf.predict_proba(test))


def test_a_changed_base_is_refused_at_load(trained, tmp_path: Path) -> None:
    import json
    import shutil

    from mmfuse.model.checkpoint import CheckpointError, load_model

    _, _, run = trained
    folder = tmp_path / "ckpt"
    shutil.copytree(run / "checkpoints" / "best", folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["encoders"]["text"]["base_weights"] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="base weights of the LoRA text encoder"):
        load_model(folder)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"freeze": False}, "lora trains adapters on a frozen encoder, but freeze is false"),
        ({"trainable_top_k": 1}, "lora trains adapters on a frozen encoder, but trainable_top_k=1"),
        ({"lora": {"r": 0}}, "model.text_encoder.lora.r"),
        ({"lora": {"rank": 4}}, "rank"),
    ],
)
def test_contradictory_lora_settings_are_config_errors(settings: dict, message: str, tmp_path: Path) -> None:
    text = {"name": "minilm", "lora": {"r": 4}, **settings}
    with pytest.raises(ConfigError, match=message):
        validate_config(_config(tmp_path, tmp_path, text, {"name": "efficientnet-lite0"}))


def test_lora_on_efficientnet_is_a_config_error_naming_what_supports_it(tmp_path: Path) -> None:
    from mmfuse.config import EncoderConfig

    with pytest.raises(ConfigError, match=r"model.image_encoder.lora: .*LoRA works on the Hugging Face encoders"):
        build_encoder("image", EncoderConfig(name="efficientnet-lite0", lora={"r": 4}))


def test_lora_is_set_by_its_path_and_a_short_dropout_stays_the_heads() -> None:
    import yaml
    from typer.testing import CliRunner

    from mmfuse.cli import app

    shown = CliRunner().invoke(app, ["config", "show", "--set", "text_encoder.lora.r=4"])
    assert shown.exit_code == 0, shown.output
    lora = yaml.safe_load(shown.stdout)["model"]["text_encoder"]["lora"]
    assert lora == {"r": 4, "alpha": 16.0, "dropout": 0.0, "target": None}
    # `dropout` alone is not ambiguous with the two lora.dropout settings: it still points at the head's
    ambiguous = CliRunner().invoke(app, ["config", "show", "--set", "dropout=0.2"])
    assert ambiguous.exit_code == 2 and "did you mean model.head.params.dropout" in ambiguous.output


@pytest.mark.slow  # the ONNX export and its check: ~25 s
def test_a_lora_model_exports_to_onnx_with_parity(trained, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the ONNX check needs the export extra")
    from mmfuse.export.onnx_export import export_run

    _, _, run = trained
    result = export_run(run, tmp_path / "lora.onnx")
    # onnxruntime's kernels round differently from PyTorch's: float32 noise, far below any change of a prediction
    assert max(result.max_abs_diff.values()) < 1e-4


def test_lora_lr_is_the_adapters_own_learning_rate_and_by_default_the_encoders(trained, tmp_path: Path) -> None:
    from mmfuse.config import OptimConfig
    from mmfuse.engine.optim import build_optimizer, current_lrs

    clf, _, _ = trained
    model = _model(clf)
    adapters = {id(p) for n, p in model.named_parameters() if p.requires_grad and is_adapter_key(n)}
    split = build_optimizer(model, OptimConfig(lr=1e-3, encoder_lr=1e-5, lora_lr=5e-4))
    groups = {g["group"]: g for g in split.param_groups}
    assert {id(p) for g in ("lora", "lora_no_decay") if g in groups for p in groups[g]["params"]} == adapters
    assert groups["lora"]["lr"] == 5e-4 and current_lrs(split) == {"head": 1e-3, "lora": 5e-4}
    same = build_optimizer(model, OptimConfig(lr=1e-3, encoder_lr=1e-5))  # default: adapters at encoder_lr
    assert current_lrs(same) == {"head": 1e-3, "encoder": 1e-5}
    assert {id(p) for g in same.param_groups if g["group"].startswith("encoder") for p in g["params"]} == adapters
    data = _config(Path("."), tmp_path, {"name": str(tiny_bert_dir())}, {"name": str(tiny_clip_vision_dir())})
    data["optim"]["lora_lr"] = 1e-3
    with pytest.raises(ConfigError, match=r"optim\.lora_lr=0\.001 is the learning rate of LoRA adapters, but no"):
        validate_config(data)
    data["model"]["text_encoder"]["lora"] = {"r": 2}
    assert validate_config(data).optim.lora_lr == 1e-3
