"""One CLIP / SigLIP checkpoint for both towers (``model.encoder``) and the ``zero_shot`` head, through the public API
(configs, ``MultimodalClassifier``, the CLI), on tiny random two-tower models saved with ``save_pretrained``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny_text import tiny_text_dir
from mmfuse import MultimodalClassifier
from mmfuse.config import ConfigError, validate_config

FAMILIES = ["clip", "siglip"]


def _config(root: Path, out: Path, model: dict, name: str, epochs: int = 1) -> dict:
    return {
        "data": {"root": str(root), "preset": "hateful_memes"},
        "model": model,
        "optim": {"lr": 3e-3},
        "train": {"epochs": epochs, "batch_size": 16, "seed": 0, "device": "cpu"},
        "run": {"out_dir": str(out), "name": name, "quiet": True},
    }


def _count_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every transformers model ``from_pretrained`` call, by class name."""
    import transformers

    calls: list[str] = []
    original = transformers.PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(counting))
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_model_encoder_loads_the_checkpoint_once_for_both_towers(
    family: str, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = str(tiny_text_dir(family))
    loads = _count_loads(monkeypatch)
    cfg = validate_config(_config(synthetic_root, tmp_path, {"encoder": folder, "head": "align"}, "one"))
    assert cfg.model.text_encoder.name == cfg.model.image_encoder.name == folder
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    assert len(loads) == 1, loads  # one full model read, not a text tower and a vision tower
    model = clf.predictor().model
    assert model.text_encoder.two_towers is model.image_encoder.two_towers
    assert model.text_encoder.two_towers.family == family


@pytest.mark.parametrize("family", FAMILIES)
def test_one_checkpoint_predicts_what_the_two_towers_named_separately_do(
    family: str, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    """Same weights, same pooled (shared-space) outputs, same seed: the same model, whichever way it was named."""
    folder = str(tiny_text_dir(family))
    together = {"encoder": folder, "head": "align"}
    apart = {"text_encoder": folder, "image_encoder": folder, "head": "align"}
    probas = []
    for name, model in (("together", together), ("apart", apart)):
        cfg = validate_config(_config(synthetic_root, tmp_path, model, name, epochs=2))
        clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
        probas.append(clf.predict_proba(synthetic_splits["test"]))
    np.testing.assert_array_equal(probas[0], probas[1])


def test_model_encoder_settings_per_tower_still_apply(synthetic_root: Path, tmp_path: Path) -> None:
    folder = str(tiny_text_dir("clip"))
    model = {"encoder": folder, "text_encoder": {"options": {"max_length": 8}}, "image_encoder": {"name": folder}}
    cfg = validate_config(_config(synthetic_root, tmp_path, model, "x"))
    assert cfg.model.text_encoder.name == folder and cfg.model.text_encoder.options == {"max_length": 8}
    # the dumped config (meta.json, config.yaml) validates again to the same
    assert validate_config({**cfg.to_dict()}).model == cfg.model


def test_model_encoder_with_another_encoder_name_is_a_config_error(synthetic_root: Path, tmp_path: Path) -> None:
    folder = str(tiny_text_dir("clip"))
    model = {"encoder": folder, "image_encoder": "efficientnet-lite0", "head": "align"}
    with pytest.raises(ConfigError, match=r"image_encoder\.name='efficientnet-lite0' names another"):
        validate_config(_config(synthetic_root, tmp_path, model, "x"))


def test_model_encoder_of_a_single_tower_says_it_has_not_both(
    synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    cfg = validate_config(_config(synthetic_root, tmp_path, {"encoder": str(tiny_text_dir("clip-text"))}, "x"))
    with pytest.raises(ConfigError, match=r"model\.encoder: .*'clip_text_model' model, not a full CLIP or SigLIP"):
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])


def test_zero_shot_without_one_checkpoint_is_a_config_error(
    synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    folder = str(tiny_text_dir("clip"))
    model = {"text_encoder": folder, "image_encoder": folder, "head": "zero_shot"}
    cfg = validate_config(_config(synthetic_root, tmp_path, model, "x"))
    with pytest.raises(ConfigError, match=r"zero_shot needs the text and image towers of one .* set model\.encoder"):
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])


def test_zero_shot_prompt_for_an_unknown_class_is_a_config_error(
    synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    model = {"encoder": str(tiny_text_dir("clip")), "head": {"name": "zero_shot", "params": {"prompts": {"x": "a"}}}}
    cfg = validate_config(_config(synthetic_root, tmp_path, model, "x"))
    with pytest.raises(ConfigError, match=r"prompts names class\(es\) \['x'\] that the labels do not have"):
        MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])


PROMPTS = {"1": "a hateful meme", "0": "a harmless meme"}


@pytest.fixture(scope="module", params=FAMILIES)
def zero_shot_run(request, synthetic_root: Path, synthetic_splits: dict, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    out = tmp_path_factory.mktemp(f"zero_shot_{family}")
    head = {"name": "zero_shot", "params": {"prompts": PROMPTS}}
    cfg = validate_config(_config(synthetic_root, out, {"encoder": str(tiny_text_dir(family)), "head": head}, "zs", 3))
    clf = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    return family, clf, out / "zs"


def _reference_proba(family: str, classes: list[str], image_paths: list[Path]) -> np.ndarray:
    """What the model itself says, straight from transformers: CLIP's softmax over its image-text logits; SigLIP's
    per-class sigmoids normalised to sum to 1."""
    import transformers as tf

    folder = tiny_text_dir(family)
    full = (tf.CLIPModel if family == "clip" else tf.SiglipModel).from_pretrained(folder).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    processor = tf.AutoImageProcessor.from_pretrained(folder)
    prompts = [PROMPTS[c] for c in classes]
    padding = "longest" if family == "clip" else "max_length"
    text = tokenizer(prompts, padding=padding, max_length=tokenizer.model_max_length, return_tensors="pt")
    pixels = processor([Image.open(p).convert("RGB") for p in image_paths], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if family == "clip":
            logits = full(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
            return torch.softmax(logits.logits_per_image.double(), -1).numpy()
        logits = full(input_ids=text["input_ids"], pixel_values=pixels).logits_per_image  # no mask: as trained
        sig = torch.sigmoid(logits.double())
        return (sig / sig.sum(-1, keepdim=True)).numpy()


def test_zero_shot_trains_nothing_and_says_so(zero_shot_run) -> None:
    _, clf, run = zero_shot_run
    assert any("no training epoch was run (train.epochs=3 ignored)" in n for n in clf.summary["notes"])
    assert clf.summary["epochs_run"] == 1 and len(clf.history) == 1
    assert not any(p.requires_grad for p in clf.predictor().model.parameters() if p.numel())
    assert (run / "checkpoints" / "best").is_dir()


def test_zero_shot_probabilities_are_the_models_own_image_prompt_similarities(
    zero_shot_run, synthetic_splits: dict
) -> None:
    family, clf, _ = zero_shot_run
    test = synthetic_splits["test"]
    proba = clf.predict_proba(test)
    if clf.temperature is not None:  # calibrated on validation (train.calibrate): the model's own softmax before it
        from mmfuse.engine.calibration import uncalibrated

        proba = uncalibrated(proba, clf.temperature)
    expected = _reference_proba(family, clf.classes, [Path(e.image) for e in test.examples])
    # the same float32 model computed by two code paths (mmfuse's encoders vs transformers' full model forward):
    # reductions may be ordered differently, far below any probability that matters
    np.testing.assert_allclose(proba, expected, atol=1e-5)


def test_a_saved_zero_shot_run_reloads_and_evaluates_through_the_cli(zero_shot_run, synthetic_root: Path) -> None:
    from typer.testing import CliRunner

    from mmfuse.cli import app

    _, clf, run = zero_shot_run
    test = _test_split(synthetic_root)
    loaded = MultimodalClassifier.load(run)
    np.testing.assert_array_equal(loaded.predict_proba(test), clf.predict_proba(test))
    result = CliRunner().invoke(app, ["evaluate", str(run), "--split", "test"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "majority" in result.output


def _test_split(root: Path):
    from mmfuse.data import DataConfig, load_splits

    return load_splits(DataConfig(root=root, preset="hateful_memes"))["test"]


@pytest.mark.slow  # the ONNX export and its check
def test_zero_shot_exports_to_onnx_with_parity(zero_shot_run, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the ONNX check needs the export extra")
    from mmfuse.export.onnx_export import export_run

    _, _, run = zero_shot_run
    result = export_run(run, tmp_path / "zs.onnx")
    # onnxruntime's kernels round differently from PyTorch's: float32 noise, far below any change of a prediction
    assert max(result.max_abs_diff.values()) < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_shows_the_zero_shot_baseline_beside_a_two_tower_model(
    family: str, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    """A model on one checkpoint's frozen towers is evaluated beside that checkpoint's zero-shot predictions (the
    same numbers as a zero_shot run's own evaluation); a model on two separately named encoders has no such row."""
    folder = str(tiny_text_dir(family))
    test = synthetic_splits["test"]
    runs = {}
    for name, model in (
        ("align", {"encoder": folder, "zero_shot_prompts": PROMPTS, "head": "align"}),
        ("zs", {"encoder": folder, "head": {"name": "zero_shot", "params": {"prompts": PROMPTS}}}),
        ("apart", {"text_encoder": folder, "image_encoder": folder, "head": "align"}),
    ):
        cfg = validate_config(_config(synthetic_root, tmp_path, model, name))
        runs[name] = MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])
    result = runs["align"].evaluate(test)
    assert set(result["baselines"]) == {"majority", "random", "zero_shot"}
    assert result["baselines"]["zero_shot"] == runs["zs"].evaluate(test)["metrics"]
    assert "zero_shot" not in runs["apart"].evaluate(test)["baselines"]

    from typer.testing import CliRunner

    from mmfuse.cli import app

    shown = CliRunner().invoke(app, ["evaluate", str(tmp_path / "align"), "--split", "test"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "zero_shot baseline" in shown.output


def test_an_override_of_a_tower_setting_keeps_the_checkpoint_of_model_encoder(tmp_path: Path) -> None:
    """``--set model.text_encoder.freeze=false`` beside ``model.encoder`` (a section the file does not have) adjusts
    that tower; it does not bring back the default encoder's name, which would contradict ``model.encoder``."""
    import yaml

    from mmfuse.config import load_config

    folder = str(tiny_text_dir("clip"))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"encoder": folder, "head": "align"}}), encoding="utf-8")
    cfg = load_config(path, ["model.text_encoder.freeze=false", "model.image_encoder.options={}"])
    assert cfg.model.text_encoder.name == cfg.model.image_encoder.name == folder
    assert cfg.model.text_encoder.freeze is False
