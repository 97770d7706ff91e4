"""Reference rows of a sweep that train no network: logistic regression on the frozen encoders' pooled features, and
the ``zero_shot`` baseline of a sweep that compares heads on one CLIP / SigLIP checkpoint's two towers.

``baselines: [logistic]`` in a sweep file adds, before any trial, one scikit-learn ``LogisticRegression`` per
feature set: the text encoder's pooled vector, and text and image side by side (when the base config has both
encoders). The features are standardized on train; ``C`` and the class weights are chosen on the validation split
(the sweep's metric, ties: accuracy, then the first), and the test split is only predicted. The features come from
the run's feature source (``cache`` of the base config), so the encoders run once for the reference and the trials.

The sweep folder gets::

    <sweep>/baselines.json             each row: its features, the chosen C and class weights, val and test metrics;
                                       the seconds each encoder's features took (``features_s``)
    <sweep>/baselines/logistic-text.npz          its validation and test probabilities (val_proba, test_labels, ...)
    <sweep>/baselines/logistic-text+image.npz

They are deterministic: a sweep run again reads them instead of fitting again (unless the data or encoders changed).

A sweep that compares heads on one checkpoint's two towers (``model.encoder``; unless ``baselines: false``) also
gets the checkpoint's ``zero_shot`` row (:func:`zero_shot_baseline`: its prompts ``model.zero_shot_prompts``, no
training; the numbers ``evaluate`` shows beside a model on those towers), under ``zero_shot`` in ``baselines.json``
and its run folder in ``<sweep>/baselines/zero_shot``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.engine.metrics import HIGHER_IS_BETTER, classification_metrics, headline
from mmfuse.sweep.ensemble import score

BASELINES_JSON = "baselines.json"
C_VALUES = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""Inverse regularization strengths tried on validation."""
CLASS_WEIGHTS = (None, "balanced")
FEATURE_SETS = {"text": ("text",), "text+image": ("text", "image")}
"""Row name -> the modalities whose pooled features are put side by side."""


def logistic_baselines(
    config: Any,
    splits: dict[str, Any],
    folder: Path,
    metric: str,
    log: Callable[[str], None],
    need_sequence: Sequence[str] = (),
) -> dict[str, Any]:
    """Fits (or reads back) the logistic-regression rows of a sweep; returns ``baselines.json``'s content.

    Args:
        config: the sweep's base config (its encoders, cache and eval batch size).
        splits: the loaded splits (``train`` and ``val``; ``test`` when labeled).
        folder: the sweep folder.
        metric: the sweep's selection metric (chooses C and the class weights).
        log: called with one line per row.
        need_sequence: modalities whose full outputs (tokens / grid) the sweep's heads read: asked for here too,
            so the feature source computes each encoder once.
    """
    from mmfuse.data.labels import LabelMap

    path = folder / BASELINES_JSON
    encoders = {m: getattr(config.model, f"{m}_encoder") for m in ("text", "image")}
    rows = {name: mods for name, mods in FEATURE_SETS.items() if all(encoders[m] is not None for m in mods)}
    if not rows:
        log("baselines: no logistic-regression reference (the base config has no text encoder)")
        return {"logistic": {}}
    label_map = LabelMap.from_labels(e.label for e in splits["train"].examples)
    parts = [s for s in ("train", "val", "test") if s in splits and splits[s].report.labeled]
    key = _key(config, splits, parts, metric)
    if path.is_file():
        done = json.loads(path.read_text(encoding="utf-8"))
        if done.get("key") == key and set(done.get("logistic", {})) == set(rows):
            return done
    y = {s: np.array([label_map.encode(e.label) for e in splits[s].examples]) for s in parts}
    seconds: dict[str, float] = {}
    pooled = _pooled(config, splits, parts, {m for mods in rows.values() for m in mods}, need_sequence, log, seconds)
    out: dict[str, Any] = {"key": key, "metric": metric, "classes": label_map.classes, "features_s": seconds,
                           "logistic": {}}  # fmt: skip
    (folder / "baselines").mkdir(parents=True, exist_ok=True)
    for name, mods in rows.items():
        x = {s: np.hstack([pooled[m][s] for m in mods]) for s in parts}
        row, probas = fit_logistic(x, y, label_map.classes, metric)
        row["features"] = [f"{m}: {encoders[m].name}" for m in mods]
        np.savez(folder / "baselines" / f"logistic-{name}.npz", classes=np.array(label_map.classes),
                 **{f"{s}_proba": p for s, p in probas.items()}, **{f"{s}_labels": y[s] for s in probas})  # fmt: skip
        out["logistic"][name] = row
        log(f"baseline logistic regression on {name} features ({row['chosen_text']}): val {metric} "
            f"{_text(row['val'].get(metric))}")  # fmt: skip
    path.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
    return out


def fit_logistic(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], classes: Sequence[str], metric: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Logistic regression on standardized ``x`` (by split), ``C`` and class weights chosen on ``val``.

    Returns:
        The row (chosen settings, val and test metrics, seconds) and the val/test probabilities of the chosen fit.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x["train"])
    x = {s: scaler.transform(v) for s, v in x.items()}
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    start, best = time.perf_counter(), None
    for c, weights in itertools.product(C_VALUES, CLASS_WEIGHTS):
        model = LogisticRegression(C=c, class_weight=weights, max_iter=3000).fit(x["train"], y["train"])
        proba = model.predict_proba(x["val"])
        value = score(metric, y["val"], proba, classes)
        rank = (sign * value if not math.isnan(value) else -math.inf, float((proba.argmax(1) == y["val"]).mean()))
        if best is None or rank > best[0]:  # ties: the first
            best = (rank, model, c, weights)
    assert best is not None
    _, model, c, weights = best
    probas = {s: model.predict_proba(v) for s, v in x.items() if s != "train"}
    metrics = {s: headline(classification_metrics(y[s], p, list(classes))) for s, p in probas.items()}
    row = {
        "C": c,
        "class_weight": weights or "none",
        "chosen_text": f"C {c:g}, cw {weights or 'none'}",
        "val": metrics["val"],
        "test": metrics.get("test"),
        "seconds": time.perf_counter() - start,
    }
    return row, probas


def zero_shot_baseline(
    config: Any, splits: dict[str, Any], folder: Path, metric: str, log: Callable[[str], None]
) -> dict[str, Any] | None:
    """The ``zero_shot`` row of a sweep whose base config has one checkpoint's two towers (``model.encoder``), added
    to ``baselines.json``; ``None`` (and nothing written) for any other base config or a ``zero_shot`` base head.

    The base config with the head swapped for ``zero_shot`` (prompts: ``model.zero_shot_prompts``) is fitted, which
    trains nothing (it validates once and tunes the binary threshold), then evaluated on val and test: the numbers
    ``evaluate`` shows as the ``zero_shot`` baseline beside a model on those towers. Read back when done before on
    the same config and examples.
    """
    from mmfuse.config import validate_config
    from mmfuse.engine.classifier import MultimodalClassifier

    model = config.model
    if model.encoder is None or model.head.name == "zero_shot":
        return None
    path = folder / BASELINES_JSON
    parts = [s for s in ("val", "test") if s in splits and splits[s].report.labeled]
    key = _key(config, splits, ["train", *parts], "zero_shot")
    done = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if (done.get("zero_shot") or {}).get("key") == key:
        return done["zero_shot"]
    data = config.to_dict()
    data["model"]["head"] = {"name": "zero_shot", "params": {"prompts": dict(model.zero_shot_prompts or {})}}
    data["run"] = {**data.get("run", {}), "out_dir": str(folder / "baselines"), "name": "zero_shot", "quiet": True,
                   "overwrite": True}  # fmt: skip
    start = time.perf_counter()
    clf = MultimodalClassifier(validate_config(data)).fit(splits["train"], splits["val"])
    metrics = {s: headline(clf.evaluate(splits[s], name=s)["metrics"]) for s in parts}
    row = {"key": key, "encoder": model.encoder, "val": metrics["val"], "test": metrics.get("test"),
           "seconds": time.perf_counter() - start}  # fmt: skip
    done = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    done["zero_shot"] = row
    path.write_text(json.dumps(done, indent=2, default=float) + "\n", encoding="utf-8")
    log(f"baseline zero_shot on {model.encoder!r} (no training): val {metric} {_text(row['val'].get(metric))}")
    return row


def read_baselines(folder: str | Path) -> dict[str, Any] | None:
    """``baselines.json`` of a sweep folder (``None`` without ``baselines: [logistic]``)."""
    path = Path(folder) / BASELINES_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def reference_line(folder: str | Path, metric: str) -> str:
    """The summary line of the logistic rows for a sweep's ``trials.md`` (never selected: a reference)."""
    rows = (read_baselines(folder) or {}).get("logistic") or {}
    if not rows:
        return "Logistic-regression reference: not fitted yet (or no text encoder in the base config)."
    shown = ", ".join(
        f"{name} {_text(r['val'].get(metric))} (test {_text((r.get('test') or {}).get(metric))})"
        for name, r in rows.items()
    )
    return f"Logistic regression on frozen pooled features (baselines.json; never selected): val {metric} {shown}."


def read_baseline_predictions(folder: str | Path, name: str) -> dict[str, np.ndarray]:
    """The saved probabilities of one logistic row (``val_proba``, ``val_labels``, ``test_proba``, ...)."""
    with np.load(Path(folder) / "baselines" / f"logistic-{name}.npz") as data:
        return {k: data[k] for k in data.files}


def _pooled(config: Any, splits: dict[str, Any], parts: Sequence[str], modalities: set[str],
            need_sequence: Sequence[str], log: Callable[[str], None],
            seconds: dict[str, float]) -> dict[str, dict[str, np.ndarray]]:  # fmt: skip
    """Each modality's pooled features by split, from the config's feature source; ``seconds``: time by modality
    (the first, cold computation is what a rerun reads back from ``baselines.json``)."""
    from mmfuse.cache import source_for
    from mmfuse.model.build import build_encoder

    source = source_for(config.cache.enabled, config.cache.dir, **config.cache.storage_options())
    out: dict[str, dict[str, np.ndarray]] = {}
    for modality in ("text", "image"):
        if modality not in modalities:
            continue
        cfg = getattr(config.model, f"{modality}_encoder")
        encoder = build_encoder(modality, cfg)
        out[modality], begin = {}, time.perf_counter()
        for split in parts:
            start = time.perf_counter()
            table = source.get(encoder, splits[split].examples, need_sequence=modality in need_sequence,
                               batch_size=config.train.eval_batch)  # fmt: skip
            out[modality][split] = table.pooled.numpy()
            log(f"baselines: {modality} features of {split} ({cfg.name}, {len(splits[split])} examples) in "
                f"{time.perf_counter() - start:.1f}s")  # fmt: skip
        seconds[modality] = time.perf_counter() - begin
        del encoder
    return out


def _key(config: Any, splits: dict[str, Any], parts: Sequence[str], metric: str) -> str:
    """What the rows depend on: the encoders, the examples of each split, the metric, the grid of settings."""
    model = config.model
    payload = {
        "text": model.text_encoder.model_dump(mode="json") if model.text_encoder else None,
        "image": model.image_encoder.model_dump(mode="json") if model.image_encoder else None,
        "splits": {s: [[e.id, e.label, e.text, str(e.image)] for e in splits[s].examples] for s in parts},
        "metric": metric,
        "grid": [list(C_VALUES), [str(w) for w in CLASS_WEIGHTS]],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _text(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
