"""The leaderboard of a sweep: every trial (the unimodal baselines among them) and the ensemble, with their
hyperparameters and validation metric, and with ``data`` given, their metrics on that data.

(The module's name is plural so that ``mmfuse.sweep.leaderboard`` stays the function: importing a submodule of the
same name would replace it on the package.)

::

    leaderboard("sweeps/mvsa")                       # the ranked trials table plus the ensemble's row
    leaderboard("sweeps/mvsa", test_df)              # ... and each model's metrics on test_df
    Ensemble.load("sweeps/mvsa/ensemble").leaderboard(test_df, metrics=["accuracy", "roc_auc_ovr"])

The rows are the sweep's ranked table (:func:`~mmfuse.sweep.table.trials_frame`, as ``trials.csv``: rank, trial,
state, baseline, one column per swept key, ``val_<metric>``, ...) with a first column ``model`` (``trial 3``, a
baseline's head, or ``ensemble``), and the ensemble's row first when the sweep has one (``<sweep>/ensemble``, or the
ensemble asked about). Metrics on ``data`` are columns ``data_<name>``, computed for every complete trial, the
baselines and the ensemble (the ensemble from its members' probabilities, each model run once); the other rows
(pruned, failed, ...) get none, and their ``note`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmfuse.engine.metrics import check_scorer_names, scorer_metrics
from mmfuse.sweep.ensemble import ENSEMBLE_JSON, Ensemble, score
from mmfuse.sweep.runner import SweepDir, sweep_table


def leaderboard(
    sweep_folder: str | Path,
    data: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    ensemble: Ensemble | str | Path | None = None,
    storage: str | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Every trial of a sweep (baselines included) and its ensemble as one table.

    Args:
        sweep_folder: the folder ``mmfuse sweep`` (or :func:`~mmfuse.sweep.run_sweep`) wrote.
        data: labeled examples to measure each model on (a DataFrame, a list of dicts or of ``Example``, a split,
            a data file; read with the trials' data config), or ``None`` for the validation metrics only.
        metrics: with ``data``: scikit-learn scorer names (as ``MultimodalClassifier.evaluate(metrics=...)``);
            default: the sweep's selection metric, accuracy and macro-F1, computed as the sweep's tables do.
        ensemble: the ensemble to list (an :class:`~mmfuse.sweep.Ensemble` or its folder); default: the sweep's
            ``ensemble`` folder when there is one.
        storage: the study's storage URL, when it is not the sweep folder's own.
        device: where the models run on ``data`` (default: the CPU).

    Returns:
        A DataFrame, one row per model (see the module's description).

    Raises:
        FileNotFoundError: not a sweep folder, or a complete trial's run folder is gone.
        UnknownMetricError: a metric name that is not a scikit-learn scorer (before any model runs).
        ValueError: ``data`` with unlabeled examples, or a metric that does not apply to these classes.
    """
    names = check_scorer_names(metrics) if metrics is not None else None
    sweep_dir = SweepDir.existing(sweep_folder)
    frame, info = sweep_table(sweep_dir.path, storage)
    metric = info["metric"]
    frame.insert(
        0,
        "model",
        [f"{b} (baseline)" if b else f"trial {t}" for b, t in zip(frame["baseline"], frame["trial"], strict=True)],
    )
    if ensemble is None and (sweep_dir.path / "ensemble" / ENSEMBLE_JSON).is_file():
        ensemble = sweep_dir.path / "ensemble"
    if isinstance(ensemble, (str, Path)):
        ensemble = Ensemble.load(ensemble, device=device)
    if ensemble is not None:
        frame = pd.concat([_ensemble_row(ensemble, frame, sweep_dir.path, metric), frame], ignore_index=True)
        frame["trial"] = frame["trial"].astype("Int64")
    if data is None:
        return frame
    names = names or list(dict.fromkeys([metric, "accuracy", "macro_f1"]))
    scores = _DataScores(data, names, scorers=metrics is not None, ensemble=ensemble, device=device)
    values: dict[int, dict[str, float | None]] = {}
    for i, row in frame.iterrows():
        if row["model"] == "ensemble":
            assert ensemble is not None
            values[i] = scores.of_ensemble(ensemble)
        elif row["state"] == "complete":
            values[i] = scores.of_run(sweep_dir.path / str(row["run_dir"]))
    for name in names:
        frame[f"data_{name}"] = pd.array([values.get(i, {}).get(name) for i in frame.index], dtype="Float64")
    return frame


def ensemble_leaderboard(
    ensemble: Ensemble, data: Any = None, *, metrics: Sequence[str] | None = None, storage: str | None = None
) -> pd.DataFrame:
    """:func:`leaderboard` of the sweep the ensemble's members come from, with this ensemble's row
    (:meth:`Ensemble.leaderboard <mmfuse.sweep.Ensemble.leaderboard>`).

    Raises:
        ValueError: the members are not the trials of one sweep folder.
    """
    folders = {Path(run).resolve().parent.parent for run in ensemble.runs}
    if len(folders) != 1 or not (next(iter(folders)) / "sweep.json").is_file():
        raise ValueError(
            f"the ensemble's members {[str(r) for r in ensemble.runs]} are not the trials of one sweep folder "
            "(<sweep>/trials/trial-NNNN); a leaderboard lists a sweep's trials: call mmfuse.sweep.leaderboard(folder)"
        )
    return leaderboard(next(iter(folders)), data, metrics=metrics, ensemble=ensemble, storage=storage)


def _ensemble_row(ensemble: Ensemble, frame: pd.DataFrame, sweep: Path, metric: str) -> pd.DataFrame:
    """The ensemble as a row of the table: its validation metric (measured on the validation set its weights were
    chosen on, so an optimistic estimate: the note says so) and its members with their weights."""
    trials = {(sweep / str(r)).resolve(): t for r, t in zip(frame["run_dir"], frame["trial"], strict=True) if r}
    members = ", ".join(
        f"{'trial ' + str(trials[Path(run).resolve()]) if Path(run).resolve() in trials else str(run)} ({w:.2f})"
        for run, w in zip(ensemble.runs, ensemble.weights, strict=True)
    )
    row: dict[str, Any] = dict.fromkeys(frame.columns)
    row.update({
        "model": "ensemble", "state": "complete", "baseline": "",
        f"val_{metric}": (ensemble.info.get("val") or {}).get(metric), "run_dir": "",
        "note": f"weighted mean of {members}; its val {metric} is on the validation set the weights were chosen on "
                "(optimistic)",
    })  # fmt: skip
    out = pd.DataFrame([row], columns=frame.columns)
    out["rank"] = out["rank"].astype("Int64")
    return out


class _DataScores:
    """Metrics of runs and ensembles on one dataset; each run is loaded (or taken from the ensemble) and run once."""

    def __init__(
        self, data: Any, names: list[str], *, scorers: bool, ensemble: Ensemble | None, device: str | None
    ) -> None:
        self.data, self.names, self.scorers, self.device = data, names, scorers, device
        self.loaded = {Path(r).resolve(): m for r, m in zip(ensemble.runs, ensemble.members, strict=True)} if ensemble \
            else {}  # fmt: skip
        self.probas: dict[Path, np.ndarray] = {}
        self.inputs: Any = None
        self.y: np.ndarray | None = None
        self.classes: list[str] = []

    def proba(self, run: Path) -> np.ndarray:
        from mmfuse.data.inputs import inputs_of
        from mmfuse.data.labels import LabelMap
        from mmfuse.model.predictor import TorchPredictor

        key = Path(run).resolve()
        if key not in self.probas:
            if not key.is_dir():
                raise FileNotFoundError(f"the run folder {str(run)!r} is gone; the leaderboard needs it to run the "
                                        "model on data (pass data=None for the validation metrics only)")  # fmt: skip
            predictor = self.loaded.get(key) or TorchPredictor.from_run(key, device=self.device or "cpu")
            if self.inputs is None:
                self.inputs = inputs_of(self.data, predictor.config.data, labeled=True)
                unlabeled = sum(e.label is None for e in self.inputs.examples)
                if unlabeled:
                    raise ValueError(f"{unlabeled} of {len(self.inputs.examples)} examples have no label; a "
                                     "leaderboard on data needs labeled examples")  # fmt: skip
                self.classes = list(predictor.classes)
                labels = LabelMap(self.classes)
                self.y = np.array([labels.encode(e.label) for e in self.inputs.examples])
            if list(predictor.classes) != self.classes:
                raise ValueError(f"run {str(run)!r} predicts classes {predictor.classes}, the others {self.classes}; "
                                 "a leaderboard compares models of one task")  # fmt: skip
            self.probas[key] = predictor.run_examples(self.inputs, labeled=True, task="evaluate")[0].proba
        return self.probas[key]

    def of_run(self, run: Path) -> dict[str, float | None]:
        return self._scores(self.proba(run))

    def of_ensemble(self, ensemble: Ensemble) -> dict[str, float | None]:
        total = sum(w * self.proba(Path(r)) for r, w in zip(ensemble.runs, ensemble.weights, strict=True))
        return self._scores(np.asarray(total))

    def _scores(self, proba: np.ndarray) -> dict[str, float | None]:
        assert self.y is not None
        if self.scorers:
            return dict(scorer_metrics(self.y, proba, self.names))
        values = {name: score(name, self.y, proba, self.classes) for name in self.names}
        return {name: None if math.isnan(v) else v for name, v in values.items()}
