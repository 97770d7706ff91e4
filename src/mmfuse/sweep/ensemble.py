"""Ensembles of a sweep's best trials: greedy ensemble selection with replacement (Caruana et al. 2004, as in
AutoGluon's weighted ensemble), on validation predictions.

Starting from nothing, each round adds the member (any of the top-k trials, again if it helps most) whose addition
gives the averaged probabilities the best validation metric; a member's weight is how often it was picked. The
result is a folder that :func:`load_predictor` (and so ``mmfuse evaluate`` / ``mmfuse predict``) reads like a run::

    <sweep>/ensemble/ensemble.json   {"members": [{"run": "../trials/trial-0003", "weight": 0.6}, ...], ...}

:class:`Ensemble` has the predictor API of :class:`~mmfuse.engine.classifier.MultimodalClassifier`:
``predict_proba``, ``predict``, ``predictions_table``, ``evaluate``, ``classes``, ``threshold``, ``config``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfuse.engine.metrics import HIGHER_IS_BETTER, classification_metrics, evaluation, headline, tune_threshold
from mmfuse.model.prediction import predict_labels

ENSEMBLE_JSON = "ensemble.json"
FORMAT = "mmfuse-ensemble"


class EnsembleError(ValueError):
    """An ensemble that cannot be built or loaded; the message says why and what to do."""


def score(metric: str, y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
    """The value of selection ``metric`` for probabilities ``proba`` (``loss``: cross-entropy; NaN if undefined)."""
    if metric == "loss":
        picked = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)
        return float(-np.log(picked).mean())
    value = classification_metrics(y, proba, classes)[metric]
    return math.nan if value is None else float(value)


def greedy_selection(
    probas: Sequence[np.ndarray], y: np.ndarray, metric: str, classes: Sequence[str], rounds: int = 25
) -> list[int]:
    """How many times each candidate is picked by greedy selection with replacement.

    Args:
        probas: each candidate's ``(N, C)`` validation probabilities.
        y: true class ids ``(N,)``.
        metric: the metric to improve (its direction from :data:`~mmfuse.engine.metrics.HIGHER_IS_BETTER`).
        classes: class names.
        rounds: picks in all (the weights' resolution: weight = picks / rounds).

    Returns:
        Picks per candidate; ties go to the earlier candidate (the better-ranked trial).
    """
    if not probas:
        raise EnsembleError("no candidates to ensemble")
    if rounds < 1:
        raise EnsembleError(f"rounds must be at least 1, got {rounds}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    counts = [0] * len(probas)
    total = np.zeros_like(probas[0], dtype=np.float64)
    for r in range(rounds):
        best_i, best_value = 0, -math.inf
        for i, p in enumerate(probas):
            value = sign * score(metric, y, (total + p) / (r + 1), classes)
            if value > best_value + 1e-12:
                best_i, best_value = i, value
        counts[best_i] += 1
        total += probas[best_i]
    return counts


class Ensemble:
    """A weighted average of the probabilities of several trained runs (same classes).

    Args:
        members: loaded models (:class:`~mmfuse.model.TorchPredictor`), or fitted
            :class:`~mmfuse.engine.classifier.MultimodalClassifier` objects (their :meth:`predictor
            <mmfuse.engine.classifier.MultimodalClassifier.predictor>` is used).
        weights: one weight per member (normalized to sum to 1).
        threshold: binary decision threshold tuned on validation for the ensemble (``None``: argmax).
        runs: the members' run folders.
        info: the rest of ``ensemble.json``.
    """

    def __init__(
        self,
        members: Sequence[Any],
        weights: Sequence[float],
        *,
        threshold: float | None = None,
        runs: Sequence[Path] = (),
        info: dict[str, Any] | None = None,
    ) -> None:
        if not members or len(members) != len(weights):
            raise EnsembleError(f"an ensemble needs one weight per member, got {len(members)} and {len(weights)}")
        classes = [list(m.classes) for m in members]
        if any(c != classes[0] for c in classes):
            raise EnsembleError(f"ensemble members predict different classes: {classes}; combine runs of one dataset")
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise EnsembleError(f"weights must be >= 0 and not all 0, got {list(weights)}")
        self.members = [m.predictor() if callable(getattr(m, "predictor", None)) else m for m in members]
        self.weights = [float(w) / total for w in weights]
        self.threshold = threshold
        self.runs = list(runs)
        self.info = info or {}

    @property
    def classes(self) -> list[str]:
        return list(self.members[0].classes)

    @property
    def config(self) -> Any:
        """The first member's config (its ``data`` names the splits ``mmfuse evaluate --split`` reads)."""
        return self.members[0].config

    @property
    def train_class_counts(self) -> list[int] | None:
        return self.members[0].train_class_counts

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> Ensemble:
        """Loads an ensemble folder (or its ``ensemble.json``); member runs resolve against the folder.

        Raises:
            FileNotFoundError: no ``ensemble.json``, or a member run folder is missing.
            EnsembleError: not an mmfuse ensemble, or members that do not fit together.
        """
        from mmfuse.model.predictor import TorchPredictor

        path = Path(path)
        file = path if path.is_file() else path / ENSEMBLE_JSON
        if not file.is_file():
            raise FileNotFoundError(f"{str(path)!r} is not an ensemble folder (no {ENSEMBLE_JSON}); pass the folder "
                                    "`mmfuse ensemble` wrote")  # fmt: skip
        try:
            info = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise EnsembleError(f"{str(file)!r} is not valid JSON ({e})") from None
        if info.get("format") != FORMAT or not info.get("members"):
            raise EnsembleError(f"{str(file)!r} is not an mmfuse ensemble (format {info.get('format')!r})")
        runs, members, weights = [], [], []
        for member in info["members"]:
            run = Path(member["run"])
            run = run if run.is_absolute() else (file.parent / run).resolve()
            if not run.is_dir():
                raise FileNotFoundError(f"ensemble member {str(run)!r} not found; the ensemble needs its run folders")
            runs.append(run)
            members.append(TorchPredictor.from_run(run, device=device))
            weights.append(float(member["weight"]))
        return cls(members, weights, threshold=info.get("threshold"), runs=runs, info=info)

    def predict_proba(self, examples: Any, *, max_missing_images: float | None = None) -> np.ndarray:
        """``(N, C)``: the weighted mean of the members' probabilities (missing images as in
        :meth:`MultimodalClassifier.predict_proba <mmfuse.engine.classifier.MultimodalClassifier.predict_proba>`)."""
        return self._combined(examples, "predict", max_missing_images)[0]

    def _combined(
        self, examples: Any, task: str, max_missing_images: float | None, labeled: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, Any]:
        """The weighted mean probabilities, whether each example's image was read by every member that reads
        images, and what the first such member found missing (members warn once between them)."""
        from mmfuse.data.inputs import inputs_of

        inputs = inputs_of(examples, self.config.data, labeled=True if labeled else None)
        total, present, missing = None, None, None
        for member, weight in zip(self.members, self.weights, strict=True):
            if weight == 0:
                continue
            out, found = member.run_examples(
                inputs, task=task, max_missing_images=max_missing_images, labeled=labeled, warn=missing is None
            )
            p = weight * out.proba
            total = p if total is None else total + p
            if found is not None:
                missing = missing or found
                present = out.image_present if present is None else present & out.image_present
        assert total is not None
        return total, present, missing

    def predict(
        self, examples: Any, *, threshold: float | None = None, max_missing_images: float | None = None
    ) -> list[str]:
        labels = predict_labels(self.predict_proba(examples, max_missing_images=max_missing_images), threshold)
        return [self.classes[int(i)] for i in labels]

    def predictions_table(
        self, examples: Any, *, threshold: float | None = None, max_missing_images: float | None = None
    ):
        """As :meth:`MultimodalClassifier.predictions_table`."""
        from mmfuse.data.inputs import inputs_of, predictions_frame

        inputs = inputs_of(examples, self.config.data)
        proba, present, _ = self._combined(inputs, "predict", max_missing_images)
        labels = [self.classes[int(i)] for i in predict_labels(proba, threshold)]
        if present is None:
            present = np.ones(len(inputs.examples), dtype=bool)
        return predictions_frame([e.id for e in inputs.examples], proba, self.classes, labels, present)

    def evaluate(
        self, examples: Any, *, name: str | None = None, max_missing_images: float | None = None
    ) -> dict[str, Any]:
        """As :meth:`MultimodalClassifier.evaluate`: metrics beside the majority-class and random baselines."""
        from mmfuse.data.inputs import inputs_of
        from mmfuse.data.loading import Split

        inputs = inputs_of(examples, self.config.data, labeled=True)
        items = inputs.examples
        unlabeled = sum(e.label is None for e in items)
        if unlabeled:
            raise ValueError(f"{unlabeled} of {len(items)} examples have no label; evaluate needs labels (use predict)")
        y = np.array([self.classes.index(e.label) for e in items])  # type: ignore[arg-type]
        proba, _, missing = self._combined(inputs, "evaluate", max_missing_images, labeled=True)
        split = name or (examples.name if isinstance(examples, Split) else str(examples)[:60])
        result = evaluation(y, proba, self.classes, split=split, threshold=self.threshold,
                            train_class_counts=self.train_class_counts, seed=self.config.train.seed)  # fmt: skip
        if missing is not None:
            result["missing_images"] = missing.to_dict()
        return result

    def leaderboard(self, data: Any = None, **options: Any) -> Any:
        """The leaderboard of the sweep it combines, this ensemble first (:func:`mmfuse.sweep.leaderboard`)."""
        from mmfuse.sweep.leaderboards import ensemble_leaderboard

        return ensemble_leaderboard(self, data, **options)


def load_predictor(path: str | Path, *, checkpoint: str = "best", device: str | None = None) -> Any:
    """An :class:`Ensemble` for an ensemble folder, else the run loaded by ``MultimodalClassifier.load``.

    The hook for ``mmfuse evaluate`` / ``mmfuse predict``: both objects have the same predictor API
    (``evaluate``, ``predictions_table``, ``predict_proba``, ``classes``, ``threshold``, ``config``).

    Args:
        path: an ensemble folder (or its ``ensemble.json``), a run folder or a checkpoint folder.
        checkpoint: ``best`` or ``last`` for a run folder (ensembles always use their members' best).
        device: where the model(s) run.
    """
    path = Path(path)
    if (path / ENSEMBLE_JSON).is_file() or (path.is_file() and path.name == ENSEMBLE_JSON):
        return Ensemble.load(path, device=device)
    from mmfuse.engine.classifier import MultimodalClassifier

    return MultimodalClassifier.load(path, checkpoint=checkpoint, device=device)


def build_ensemble(
    sweep_folder: str | Path,
    *,
    top_k: int = 5,
    rounds: int = 25,
    out: str | Path | None = None,
    storage: str | None = None,
) -> Path:
    """Combines the top-k complete trials of a sweep by greedy selection on validation; writes ``ensemble.json``.

    Args:
        sweep_folder: the sweep folder.
        top_k: candidates: the best k complete trials on validation.
        rounds: picks of the greedy selection.
        out: the ensemble folder (default ``<sweep>/ensemble``).
        storage: the study's storage URL, when it is not the sweep folder's own.

    Returns:
        The ensemble folder.

    A sweep that compares heads (``heads:``) is combined across its heads instead: the ``top_k`` heads best on
    validation, their selected trials weighted by greedy selection (:func:`mmfuse.sweep.heads.build_heads_ensemble`).

    Raises:
        EnsembleError: fewer than one complete trial, or candidates that disagree on classes or validation data.
    """
    from mmfuse.sweep.heads import build_heads_ensemble, is_heads_folder
    from mmfuse.sweep.runner import SweepDir, sweep_table

    if is_heads_folder(sweep_folder):
        return build_heads_ensemble(sweep_folder, top_k=top_k, rounds=rounds, out=out)

    if top_k < 1:
        raise EnsembleError(f"top_k must be at least 1, got {top_k}")
    sweep_dir = SweepDir.existing(sweep_folder)
    frame, info = sweep_table(sweep_dir.path, storage)
    metric = info["metric"]
    done = frame[(frame["state"] == "complete") & (frame["baseline"] == "")].head(top_k)  # baselines: reference only
    if done.empty:
        raise EnsembleError(f"the sweep {str(sweep_dir.path)!r} has no complete trial yet; run it first")
    runs = [_run_path(sweep_dir.path, r) for r in done["run_dir"]]
    _, y, classes, probas = _val_predictions(runs)
    counts = greedy_selection(probas, y, metric, classes, rounds)
    folder = Path(out) if out is not None else sweep_dir.path / "ensemble"
    folder.mkdir(parents=True, exist_ok=True)
    proba = sum(c * p for c, p in zip(counts, probas, strict=True)) / sum(counts)
    val = headline(classification_metrics(y, proba, classes))
    val["loss"] = score("loss", y, proba, classes)
    members = [
        {"run": _portable(run, folder), "trial": int(trial), "weight": c / sum(counts), f"val_{metric}": single}
        for run, trial, c, single in zip(runs, done["trial"], counts, done[f"val_{metric}"], strict=True)
        if c > 0
    ]
    payload = {
        "format": FORMAT,
        "version": 1,
        "sweep": _portable(sweep_dir.path, folder),
        "metric": metric,
        "top_k": top_k,
        "rounds": rounds,
        "classes": classes,
        "threshold": tune_threshold(y, proba) if len(classes) == 2 else None,
        "val": val,
        "best_single": {"trial": int(done["trial"].iloc[0]), f"val_{metric}": float(done[f"val_{metric}"].iloc[0])},
        "members": members,
    }
    (folder / ENSEMBLE_JSON).write_text(json.dumps(payload, indent=2, default=float) + "\n", encoding="utf-8")
    return folder


def _run_path(sweep: Path, rel: str) -> Path:
    path = Path(rel)
    return path if path.is_absolute() else sweep / path


def _portable(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when they share a root (so the sweep folder can move), else absolute."""
    import os

    try:
        return os.path.relpath(path.resolve(), folder.resolve())
    except ValueError:
        return str(path.resolve())


def _val_predictions(runs: Sequence[Path]) -> tuple[list[str], np.ndarray, list[str], list[np.ndarray]]:
    """Each run's validation probabilities (saved by the sweep, else computed), aligned on the same examples."""
    from mmfuse.sweep.runner import VAL_PREDICTIONS

    ids = y = classes = None
    probas = []
    for run in runs:
        file = run / VAL_PREDICTIONS
        if file.is_file():
            with np.load(file, allow_pickle=False) as data:
                run_ids, proba = [str(i) for i in data["ids"]], data["proba"]
                run_y, run_classes = data["labels"], [str(c) for c in data["classes"]]
        else:
            run_ids, proba, run_y, run_classes = _predict_val(run)
        if ids is None:
            ids, y, classes = run_ids, run_y, run_classes
        elif run_ids != ids or run_classes != classes:
            raise EnsembleError(
                f"run {str(run)!r} was validated on other examples or classes than {str(runs[0])!r}; ensemble trials "
                "of one sweep that share their data config"
            )
        probas.append(np.asarray(proba, dtype=np.float64))
    assert ids is not None and y is not None and classes is not None
    return ids, np.asarray(y), classes, probas


def _predict_val(run: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    from mmfuse.data.loading import load_splits
    from mmfuse.model.predictor import TorchPredictor

    clf = TorchPredictor.from_run(run, device=None)
    if clf.config.data is None:
        raise EnsembleError(f"run {str(run)!r} has no data config to find its validation split")
    val = load_splits(clf.config.data)["val"]
    proba = clf.predict_proba(val)
    return (
        [e.id for e in val.examples],
        proba,
        np.array([clf.classes.index(e.label) for e in val.examples]),
        clf.classes,
    )
