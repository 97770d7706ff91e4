"""Calibration: temperature scaling fitted on validation after training (``train.calibrate``), stored with the model and
applied by predict / predict_proba / evaluate after a reload; ECE and Brier score in evaluate's output."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from _engine_support import make_config
from typer.testing import CliRunner

from mmfuse.cli import app
from mmfuse.engine.calibration import MIN_EXAMPLES, T_MAX, fit_temperature, nll, uncalibrated
from mmfuse.engine.classifier import MultimodalClassifier
from mmfuse.engine.metrics import tune_threshold
from mmfuse.model.prediction import probabilities


def _calibrated_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``z`` of a perfectly calibrated model and labels drawn from ``softmax(z)``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, classes))
    y = (probabilities(z).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, y


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    """Labels drawn from softmax(z), the model reports z * T: the fit finds T (T > 1: over-confident, < 1: under)."""
    z, y = _calibrated_logits(20_000, 4, seed=0)
    fit = fit_temperature(z * true_t, y)
    # the fit is a maximum-likelihood estimate of one scalar from 20000 draws: over 20 seeds at 5000 draws its
    # relative spread was 2.2% (largest error 4.3%), so at 20000 about 1.1%: 5% is over 4 standard errors
    assert fit.temperature == pytest.approx(true_t, rel=0.05)
    assert fit.note is None and fit.n == 20_000
    assert fit.nll_after < fit.nll_before and fit.ece_after < fit.ece_before


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_the_fit_never_raises_the_validation_nll_and_is_its_minimum(scale: float) -> None:
    z, y = _calibrated_logits(400, 3, seed=int(scale * 10))
    fit = fit_temperature(z * scale, y)
    assert fit.temperature is not None
    assert fit.nll_after <= fit.nll_before == pytest.approx(nll(z * scale, y))
    assert fit.nll_after == pytest.approx(nll(z * scale, y, fit.temperature))
    for step in (0.98, 1.02):  # a minimum: 2% either way is no lower
        assert nll(z * scale, y, fit.temperature * step) >= fit.nll_after


def test_no_temperature_when_validation_cannot_give_one() -> None:
    z, y = _calibrated_logits(200, 3, seed=1)
    few = fit_temperature(z[: MIN_EXAMPLES - 1], y[: MIN_EXAMPLES - 1])
    assert few.temperature is None and f"only {MIN_EXAMPLES - 1} validation examples" in few.note
    right = z.argmax(axis=1)  # every example classified right: the NLL falls as T goes to 0, no minimum
    perfect = fit_temperature(z, right)
    assert perfect.temperature is None and "classified right" in perfect.note
    assert perfect.nll_after == perfect.nll_before
    # no signal at all (labels independent of the logits): the minimum is at uniform probabilities, T clamped
    noise = fit_temperature(z, np.random.default_rng(5).integers(0, 3, 200))
    assert noise.temperature == T_MAX and "clamped" in noise.note and noise.nll_after < noise.nll_before


def test_uncalibrated_recovers_the_raw_softmax() -> None:
    z, _ = _calibrated_logits(50, 4, seed=2)
    # float64 softmax, logarithm and softmax again: rounding of a few ulps
    np.testing.assert_allclose(uncalibrated(probabilities(z, 1.7), 1.7), probabilities(z), rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------ through fit


def _three(split) -> list:
    return [dataclasses.replace(e, label=["cat", "dog", "eel"][int(e.id) % 3]) for e in split.examples]


@pytest.fixture
def calibrated(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path) -> MultimodalClassifier:
    cfg = make_config(synthetic_root, tmp_path, train={"epochs": 2})
    return MultimodalClassifier(cfg).fit(synthetic_splits["train"], synthetic_splits["val"])


def test_fit_stores_the_temperature_and_tunes_the_threshold_on_calibrated_probabilities(
    calibrated: MultimodalClassifier, synthetic_splits: dict
) -> None:
    clf = calibrated
    assert clf.config.train.calibrate == "temperature"  # the default
    t = clf.temperature
    assert t is not None and t > 0 and t != 1.0
    calibration = clf.summary["calibration"]
    assert calibration["temperature"] == t and calibration["nll_after"] <= calibration["nll_before"]
    meta = json.loads((clf.run_dir.path / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["temperature"] == t and meta["threshold"] == clf.threshold == clf.summary["threshold"]
    out, _ = clf.predictor().run_examples(synthetic_splits["val"], labeled=True)
    assert out.temperature == t
    assert clf.threshold == tune_threshold(out.labels, probabilities(out.logits, t))


def test_a_reload_applies_the_temperature(calibrated: MultimodalClassifier, synthetic_splits: dict, tmp_path) -> None:
    test = synthetic_splits["test"]
    t = calibrated.temperature
    for folder in (calibrated.run_dir.path, calibrated.save(tmp_path / "saved")):
        loaded = MultimodalClassifier.load(folder)
        assert loaded.temperature == t and loaded.threshold == calibrated.threshold
        out, _ = loaded.predictor().run_examples(test)
        proba = loaded.predict_proba(test)
        np.testing.assert_array_equal(proba, probabilities(out.logits, t))
        assert not np.allclose(proba, probabilities(out.logits))  # not the raw softmax
        details = loaded.predict_details(test)
        # the same logits through the same float64 softmax in this process (no CPU-dependent kernel between them);
        # the details only pass each value through a dict, so anything above a few ulps would be a different formula
        assert [d.probabilities["1"] for d in details] == pytest.approx(proba[:, 1].tolist(), abs=1e-12)


def test_evaluate_reports_ece_and_brier_before_and_after(
    calibrated: MultimodalClassifier, synthetic_splits: dict, tmp_path: Path
) -> None:
    test = synthetic_splits["test"]
    result = calibrated.evaluate(test)
    out, _ = calibrated.predictor().run_examples(test, labeled=True)
    y = out.labels
    calibration = result["calibration"]
    assert calibration["temperature"] == calibrated.temperature
    for key, proba in (("", out.proba), ("_uncalibrated", out.uncalibrated_proba)):
        conf, hit = proba.max(axis=1), proba.argmax(axis=1) == y
        bins = np.minimum((conf * 10).astype(int), 9)  # 10 equal-width bins, 1.0 in the last
        ece = sum(abs(conf[bins == b].mean() - hit[bins == b].mean()) * (bins == b).mean() for b in set(bins))
        assert calibration["ece" + key] == pytest.approx(ece, abs=1e-12)  # the same sums, another order
        brier = np.mean((proba[:, 1] - y) ** 2)  # binary: the squared gap of P(class 1) to the 0/1 label
        assert calibration["brier" + key] == pytest.approx(brier, abs=1e-12)

    json_out = tmp_path / "eval.json"
    shown = CliRunner().invoke(app, ["evaluate", str(calibrated.run_dir.path), "--json", str(json_out)])
    assert shown.exit_code == 0, shown.output
    assert "expected calibration error" in shown.stdout and "Brier score" in shown.stdout
    assert "uncalibrated" in shown.stdout and f"temperature {calibrated.temperature:.3f}" in shown.stdout
    assert json.loads(json_out.read_text())["calibration"] == pytest.approx(calibration)


def test_multiclass_labels_are_the_same_with_and_without_calibration(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path
) -> None:
    fitted = {}
    for how in ("temperature", "none"):
        cfg = make_config(synthetic_root, tmp_path / how, train={"epochs": 2, "calibrate": how})
        fitted[how] = MultimodalClassifier(cfg).fit(_three(synthetic_splits["train"]), _three(synthetic_splits["val"]))
    on, off = fitted["temperature"], fitted["none"]
    assert on.temperature is not None and on.temperature != 1.0
    assert off.temperature is None and "calibration" not in off.summary
    test = _three(synthetic_splits["test"])
    p_on, p_off = on.predict_proba(test), off.predict_proba(test)
    assert not np.allclose(p_on, p_off)
    assert on.predict(test) == off.predict(test)  # the same weights (calibration comes after training), same argmax
    np.testing.assert_array_equal(p_on.argmax(axis=1), p_off.argmax(axis=1))
    assert "temperature" not in off.evaluate(test)["calibration"]
    # every label metric is the same; one-vs-rest AUROC may move (softmax(z / T) can reorder examples by one class)
    metrics_on, metrics_off = on.evaluate(test)["metrics"], off.evaluate(test)["metrics"]
    metrics_on.pop("auroc"), metrics_off.pop("auroc")
    assert metrics_on == metrics_off


# ------------------------------------------------------------------------------------------ the last checkpoint


def _run(root: Path, splits: dict, out: Path, monkeypatch: pytest.MonkeyPatch, improves) -> MultimodalClassifier:
    """A run of 3 epochs whose epochs "improve" when ``improves(best so far)`` says so."""
    import mmfuse.engine.trainer as trainer

    monkeypatch.setattr(trainer, "improves", lambda metric, val, best, loss: improves(best))
    cfg = make_config(root, out, train={"epochs": 3}, optim={"lr": 3e-2})
    return MultimodalClassifier(cfg).fit(splits["train"], splits["val"])


@pytest.fixture
def best_then_last(fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch):
    """Best epoch 1 (only the first "improves"): checkpoints/last (epoch 3) holds other weights than best."""
    return _run(synthetic_root, synthetic_splits, tmp_path, monkeypatch, lambda best: best is None)


def _own_fit(run: Path, checkpoint: str, val) -> tuple[MultimodalClassifier, Any, float]:
    """The checkpoint loaded, the temperature fit on its own validation logits, and the threshold tuned on them."""
    loaded = MultimodalClassifier.load(run, checkpoint=checkpoint)
    out, _ = loaded.predictor().run_examples(val, labeled=True)
    fit = fit_temperature(out.logits, out.labels)
    return loaded, fit, tune_threshold(out.labels, probabilities(out.logits, fit.temperature))


@pytest.mark.numerics
def test_the_last_checkpoint_is_calibrated_on_its_own_validation_logits(
    best_then_last: MultimodalClassifier, synthetic_splits: dict, synthetic_root: Path, tmp_path: Path
) -> None:
    run = best_then_last.run_dir.path
    assert best_then_last.summary["best_epoch"] == 1 and best_then_last.summary["epochs_run"] == 3
    val, test = synthetic_splits["val"], synthetic_splits["test"]
    best, best_fit, _ = _own_fit(run, "best", val)
    last, last_fit, threshold_last = _own_fit(run, "last", val)
    # the trainer fitted T on the same model's logits of the same examples (another loader, same eval batches): a
    # few float32 ulps of the logits move the NLL and the LBFGS optimum by far less than 1e-6 relative
    assert best.temperature == pytest.approx(best_fit.temperature, rel=1e-6)
    assert last.temperature == pytest.approx(last_fit.temperature, rel=1e-6) and last.temperature is not None
    assert last.threshold == pytest.approx(threshold_last, abs=1e-6)  # the same tuning on those probabilities
    stored = {k: json.loads((run / "checkpoints" / k / "meta.json").read_text()) for k in ("best", "last")}
    assert stored["last"]["calibration"]["nll_before"] == pytest.approx(last_fit.nll_before, rel=1e-6)
    assert stored["best"]["calibration"]["nll_before"] == pytest.approx(best_fit.nll_before, rel=1e-6)
    assert last_fit.nll_before != pytest.approx(best_fit.nll_before, rel=1e-3)  # other weights: another fit
    meta = stored["last"]
    assert meta["calibration"]["temperature"] == meta["temperature"] == last.temperature and meta["epoch"] == 3
    # every path gives the last model's calibrated probabilities
    out, _ = last.predictor().run_examples(test)
    np.testing.assert_array_equal(last.predict_proba(test), probabilities(out.logits, last.temperature))
    assert not np.allclose(last.predict_proba(test), probabilities(out.logits))  # not the raw softmax
    preds = tmp_path / "preds.csv"
    args = ["predict", str(run), str(synthetic_root / "test.jsonl"), "--checkpoint", "last", "--out", str(preds)]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "not calibrated" not in shown.output
    written = pd.read_csv(preds, dtype={"id": str})
    assert written["id"].tolist() == [e.id for e in test.examples]
    # pandas writes a float64 with its shortest round-tripping repr, and reads it back to the same float64
    np.testing.assert_array_equal(written["proba"].to_numpy(), probabilities(out.logits, last.temperature)[:, 1])
    shown = CliRunner().invoke(app, ["evaluate", str(run), "--checkpoint", "last"])
    assert shown.exit_code == 0, shown.output
    assert f"temperature {last.temperature:.3f}" in shown.stdout


def test_a_last_checkpoint_of_the_best_epoch_has_the_best_fit(
    fake_encoders, synthetic_root: Path, synthetic_splits: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = _run(synthetic_root, synthetic_splits, tmp_path, monkeypatch, lambda best: True)  # every epoch improves
    run = clf.run_dir.path
    assert clf.summary["best_epoch"] == clf.summary["epochs_run"] == 3
    metas = [json.loads((run / "checkpoints" / k / "meta.json").read_text()) for k in ("best", "last")]
    assert metas[0]["temperature"] is not None
    for key in ("temperature", "threshold", "calibration"):
        assert metas[0][key] == metas[1][key], key
    assert MultimodalClassifier.load(run, checkpoint="last").temperature == clf.temperature


def test_an_uncalibrated_checkpoint_says_so(best_then_last: MultimodalClassifier, synthetic_splits: dict) -> None:
    """A last checkpoint written before mmfuse calibrated it (no temperature, no fit): loading it warns, in the
    Python API and in the CLI, instead of giving the raw softmax silently."""
    from mmfuse.model.checkpoint import read_meta

    run = best_then_last.run_dir.path
    folder = run / "checkpoints" / "last"
    meta = {k: v for k, v in read_meta(folder).items() if k != "calibration"}
    (folder / "meta.json").write_text(json.dumps({**meta, "temperature": None}), encoding="utf-8")
    with pytest.warns(UserWarning, match="is not calibrated: its probabilities are the model's own softmax") as caught:
        loaded = MultimodalClassifier.load(run, checkpoint="last")
    assert loaded.temperature is None and "mmfuse train --resume RUN" in str(caught[0].message)
    shown = CliRunner().invoke(app, ["evaluate", str(run), "--checkpoint", "last"])
    assert shown.exit_code == 0, shown.output
    assert shown.stderr.count("is not calibrated") == 1  # once: the log line, not also the Python warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the best checkpoint is calibrated: nothing to say
        MultimodalClassifier.load(run)


def test_a_calibration_that_cannot_be_written_ends_train_with_one_message_and_resume_finishes(
    fake_encoders, synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up after training, as the temperature is written into checkpoints/best/meta.json (mmfuse's
    fault hook, tests/_unwritable.py): exit status 2 and one message (the file, the reason, the fix), the checkpoint
    as it was; once there is room, ``--resume`` calibrates and finishes the run."""
    from _unwritable import FAULT_ENV
    from mmfuse.model.checkpoint import read_meta

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(make_config(synthetic_root, tmp_path / "runs").to_yaml(), encoding="utf-8")
    run = tmp_path / "runs" / "run"
    best = run / "checkpoints" / "best"
    monkeypatch.setenv(FAULT_ENV, f"ENOSPC:{best}")
    result = CliRunner().invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert errors[0].startswith(
        f"error: cannot write checkpoint metadata {str(best / 'meta.json')!r}: No space left on device; free space"
    ), errors[0]
    assert f"`mmfuse train --resume {run}`" in errors[0]
    assert read_meta(best)["temperature"] is None and "calibration" not in read_meta(best)  # as training left it
    assert [p.name for p in best.iterdir() if p.name.startswith(".tmp")] == []
    monkeypatch.delenv(FAULT_ENV)
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    assert read_meta(best)["temperature"] is not None
    assert "calibration" in json.loads((run / "summary.json").read_text())
