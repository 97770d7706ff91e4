"""Running a sweep: a worker takes trials from the study until the grid or the budget is used up.

All trials of a worker run in this one process, so the features of frozen encoders are computed once and shared
(the engine's in-process feature store). Start more workers (here or on other machines, with ``--storage``) to run
trials in parallel; each takes the next trial from the shared study.

The sweep folder::

    <out>/
        sweep.json               the resolved sweep (base config, points or search space, fingerprint)
        study.db                 the Optuna study (unless --storage names another database)
        trials/trial-0007/       one run folder per trial (config, metrics.jsonl, checkpoints, val_predictions.npz)
        trials.csv, trials.md    the ranked table
        selected.json            the trial chosen on validation, and its test metrics
        final.json, final/       the selected point with each of ``seeds``, and its ``variants`` (see
                                 :mod:`mmfuse.sweep.final`)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from mmfuse._writable import check_writable
from mmfuse.config import TrainConfig
from mmfuse.data.config import DataConfig
from mmfuse.data.labels import LabelMap
from mmfuse.data.loading import Split, load_splits
from mmfuse.engine.metrics import HIGHER_IS_BETTER, evaluation_scalars, headline, selection_metric
from mmfuse.engine.tracking import nested_under
from mmfuse.sweep.spec import UNIMODAL_HEADS, Sweep, SweepError, load_sweep
from mmfuse.sweep.study import (
    A_BASELINE,
    A_ERROR,
    A_OVERRIDES,
    A_POINT,
    A_RESULT,
    A_RETRY_OF,
    A_RUN_DIR,
    A_SPARE,
    A_WORKER,
    S_SELECTED,
    S_SWEEP,
    Gate,
    default_storage_url,
    make_storage,
    masked,
    open_study,
    point_params,
    reclaim_dead,
    reclaim_stale,
    requeue,
    storage_url,
    worker_id,
)
from mmfuse.sweep.table import best_trial, metric_text, real_trials, short_value, trials_frame, write_tables

if TYPE_CHECKING:
    from mmfuse.engine.checkpoint import Committed

logger = logging.getLogger("mmfuse.sweep")

MAX_FAILURES_IN_ROW = 3
"""A worker stops after this many trials in a row failed with an error (a systematic problem)."""

VAL_PREDICTIONS = "val_predictions.npz"


class SweepDir:
    """Paths of a sweep folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    sweep_json = property(lambda self: self.path / "sweep.json")
    trials = property(lambda self: self.path / "trials")
    table_csv = property(lambda self: self.path / "trials.csv")
    table_md = property(lambda self: self.path / "trials.md")
    selected = property(lambda self: self.path / "selected.json")

    @classmethod
    def existing(cls, path: str | Path) -> SweepDir:
        """A folder ``mmfuse sweep`` wrote.

        Raises:
            FileNotFoundError: no ``sweep.json`` there.
        """
        folder = cls(path)
        if not folder.sweep_json.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a sweep folder (no sweep.json there); pass the folder `mmfuse sweep` wrote"
            )
        return folder

    def info(self) -> dict[str, Any]:
        return json.loads(self.sweep_json.read_text(encoding="utf-8"))

    def read_selected(self) -> dict[str, Any] | None:
        return json.loads(self.selected.read_text(encoding="utf-8")) if self.selected.is_file() else None


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        folder: the sweep folder.
        table: the ranked table (as in ``trials.csv``).
        metric: the selection metric.
        selected: the trial chosen on validation, with its test metrics (``None`` before any trial completed).
        finished: no trial is left to run or running (the grid or budget is used up).
        ran: numbers of the trials this worker ran.
        final: the seeds and variants of the selected point (``final.json``: each group's chosen point, mean and
            std over seeds on val and test); ``None`` when the sweep has none, or before the search finished.
        heads: a sweep that compares heads: head name -> that head's result (``table`` is then the leaderboard of
            the heads, ``selected`` the best head's selected trial with ``head`` added).
        baselines: ``baselines.json`` (the logistic-regression reference rows), ``None`` without them.
        ensemble: the folder of the ensemble of the compared heads (``ensemble:``), once built.
    """

    folder: Path
    table: pd.DataFrame
    metric: str
    selected: dict[str, Any] | None
    finished: bool
    ran: list[int]
    final: dict[str, Any] | None = None
    heads: dict[str, SweepResult] = dataclasses.field(default_factory=dict)
    baselines: dict[str, Any] | None = None
    ensemble: Path | None = None


class PruneOnEpoch:
    """Epoch callback for the engine's trainer: reports the validation metric to the trial, and stops the trial
    (``optuna.TrialPruned``, raised out of ``fit``) when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def __call__(self, record: Mapping[str, Any]) -> None:
        value = (record.get("val") or {}).get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        epoch = int(record["epoch"])
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: val {self.metric} {value:.4f}")


class SplitCache:
    """Loaded splits by data config, so trials that share data read it once.

    Args:
        limit: split name -> the number of its first examples that are kept (the sweep's ``limit``).
        log: told how many examples each limit left out.
    """

    def __init__(self, limit: Mapping[str, int] | None = None, log: Callable[[str], None] | None = None) -> None:
        self._splits: dict[str, dict[str, Split]] = {}
        self.limit = dict(limit or {})
        self.log = log or logger.info

    def get(self, data: DataConfig) -> dict[str, Split]:
        key = data.model_dump_json()
        if key not in self._splits:
            splits = load_splits(data)
            if "val" not in splits:
                raise SweepError(
                    "the sweep's data has no val split, which ranks the trials: set data.val, or data.split.val > 0"
                )
            for name, n in self.limit.items():
                if name in splits and len(splits[name]) > n:
                    self.log(f"limit: {name} split cut to its first {n} of {len(splits[name])} examples")
                    kept, report = splits[name].examples[:n], copy.deepcopy(splits[name].report)
                    report.count_examples(kept)
                    report.notes.append(f"the sweep's limit kept the first {n} of {len(splits[name])} examples")
                    splits[name] = dataclasses.replace(splits[name], examples=kept, report=report)
            self._splits[key] = splits
        return self._splits[key]


def run_sweep(
    sweep: Sweep | str | Path,
    *,
    out: str | Path | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Runs (or resumes, or joins) a sweep as one worker, then writes the ranked table and tests the selected trial.

    Run it again with the same arguments to resume: finished trials are kept, interrupted ones run again from
    their last checkpoint. Run it in several processes at once (same ``out``, or the same ``storage``) to share
    the work.

    Args:
        sweep: a validated sweep or the path of a sweep file.
        out: the sweep folder; default ``<out_dir>/<name>`` of the sweep file.
        storage: an Optuna RDB storage URL shared by several workers; default a SQLite file in the sweep folder.
        n_trials: trial budget, replacing the sweep file's.
        timeout: this worker's time budget in seconds, replacing the sweep file's.
        log: called with one line per trial event (default: the ``mmfuse.sweep`` logger).

    Raises:
        SweepError: a bad sweep or storage, or a sweep folder holding another sweep.
        UnwritableError: the sweep folder cannot be written (checked before anything runs).
        KeyboardInterrupt: the running trial was queued again first, so a resume picks it up.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    check_writable(out if out is not None else sweep.spec.out_dir / sweep.name, what="sweep folder",
                   fix="pass --out a writable folder, or set out_dir in the sweep file")  # fmt: skip
    if sweep.heads:
        from mmfuse.sweep.heads import run_heads

        return run_heads(sweep, out=out, storage=storage, n_trials=n_trials, timeout=timeout, log=log or logger.info)
    return _run_one(sweep, out, storage, n_trials, timeout, log or logger.info)


def _run_one(
    sweep: Sweep,
    out: str | Path | None,
    storage: str | None,
    n_trials: int | None,
    timeout: float | None,
    log: Callable[[str], None],
    splits: SplitCache | None = None,
) -> SweepResult:
    """:func:`run_sweep` of a sweep of one head (``splits``: loaded splits shared with the other heads)."""
    budget = n_trials if n_trials is not None else sweep.spec.n_trials
    with _quiet_optuna():
        worker = _Worker(sweep, out, storage, log, splits)
        baselines = worker.logistic_baselines()
        # with train.report_to naming mlflow: one MLflow run for this worker, each trial's run nested under it
        with nested_under(sweep.base, worker.folder.path, sweep.name):
            try:
                worker.loop(budget, timeout if timeout is not None else sweep.spec.timeout)
            finally:
                worker.write_table()
            selected = worker.test_selected()
            finished = worker.finished(budget)
            final = worker.run_final() if finished else None
            table = worker.write_table()
    return SweepResult(worker.folder.path, table, worker.metric, selected, finished, worker.ran, final,
                       baselines=baselines)  # fmt: skip


class _Worker:
    """One worker of a sweep: opens the study, runs trials, writes the table."""

    def __init__(self, sweep: Sweep, out: str | Path | None, storage: str | None, log: Callable[[str], None],
                 splits: SplitCache | None = None) -> None:  # fmt: skip
        self.sweep, self.log = sweep, log
        self.folder = SweepDir(out if out is not None else sweep.spec.out_dir / sweep.name)
        self.folder.path.mkdir(parents=True, exist_ok=True)
        self.splits = splits or SplitCache(sweep.spec.limit, log)
        for note in sweep.notes:
            log(f"sweep {sweep.name!r}: {note}")
        base_splits = self.splits.get(sweep.base.data)  # type: ignore[arg-type]
        classes = LabelMap.from_labels(e.label for e in base_splits["train"].examples).classes
        self.metric = selection_metric(sweep.metric_setting, len(classes))
        self.url, note = storage_url(storage or default_storage_url(self.folder.path))
        if note:
            log(note)
        self.gate = Gate(self.url)
        with self.gate.hold():
            self.storage = make_storage(self.url)
        self.study, created = open_study(
            sweep, self.storage, self.gate, metric=self.metric,
            direction="maximize" if HIGHER_IS_BETTER[self.metric] else "minimize",
            sampler=self._sampler(first=None), pruner=self._pruner(),
        )  # fmt: skip
        if not created:  # a joining worker: its own sampler seed, so it does not propose what the first one does
            self.study.sampler = self._sampler(first=False)
        if sweep.mode != "search":
            self.choices = point_params(sweep)[1]
        self._write_info()
        self.ran: list[int] = []
        self.worker = worker_id()
        self.log(
            f"sweep {sweep.name!r} ({sweep.mode}, {len(sweep.points) or 'searched'} points): "
            f"{'created' if created else 'joined'} the study in {masked(self.url)}; ranking by val {self.metric}"
        )

    # ------------------------------------------------------------------------------------------------- setup

    def _sampler(self, first: bool | None) -> optuna.samplers.BaseSampler:
        import os

        seed = self.sweep.spec.search.seed if self.sweep.spec.search else 0
        if first is False:
            seed = seed + 1 + os.getpid()
        if self.sweep.mode != "search":
            return optuna.samplers.RandomSampler(seed=seed)  # never consulted: every parameter is fixed
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.sweep.spec.search.n_startup_trials)  # type: ignore[union-attr]

    def _pruner(self) -> optuna.pruners.BasePruner:
        spec = self.sweep.spec.pruner
        if spec is None:
            name = "median" if self.sweep.mode == "search" else "none"
            from mmfuse.sweep.spec import PrunerSpec

            spec = PrunerSpec(name=name)
        if spec.name == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps
            )
        if spec.name == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=spec.min_resource, max_resource=self.sweep.base.train.epochs
            )
        return optuna.pruners.NopPruner()

    def _write_info(self) -> None:
        info = {**self.sweep.to_dict(), "metric": self.metric, "storage": masked(self.url)}
        if self.url == default_storage_url(self.folder.path):
            info["storage"] = "study.db"
        self.folder.sweep_json.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")

    def logistic_baselines(self) -> dict[str, Any] | None:
        """The logistic-regression reference rows (``baselines: [logistic]``), fitted once."""
        if "logistic" not in self.sweep.spec.baseline_kinds:
            return None
        from mmfuse.sweep.reference import logistic_baselines

        splits = self.splits.get(self.sweep.base.data)  # type: ignore[arg-type]
        return logistic_baselines(self.sweep.base, splits, self.folder.path, self.metric, self.log)

    # ------------------------------------------------------------------------------------------------- loop

    def loop(self, budget: int | None, timeout: float | None) -> None:
        start, failures = time.monotonic(), 0
        while True:
            if timeout is not None and time.monotonic() - start >= timeout:
                self.log(f"time budget of {timeout:g}s reached; no new trial starts")
                return
            self.gate.acquire()
            try:
                for number in reclaim_dead(self.study, self.storage):
                    self.log(f"trial {number}: its worker process died; queued again")
                for number, host in reclaim_stale(self.study):
                    grace = self.storage.grace_period
                    self.log(f"trial {number}: no heartbeat from its worker on {host} for {grace}s; queued again")
                if not self._has_work(budget):
                    return
                before = len(self.ran)
                self.study.optimize(self._objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            finally:
                self.gate.release()
            if len(self.ran) > before:
                number = self.ran[-1]
                state = self.study.get_trials(deepcopy=False)[number].state
                failures = failures + 1 if state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_ROW:
                raise SweepError(
                    f"{failures} trials in a row failed; the last error: {self._error(self.ran[-1])}. Fix it and run "
                    "the sweep again (failed trials are listed in trials.md)"
                )

    def _has_work(self, budget: int | None) -> bool:
        trials = real_trials(self.study)
        retried = {t.user_attrs.get(A_RETRY_OF) for t in trials}
        used = sum(
            1
            for t in trials
            if t.state != TrialState.WAITING and t.number not in retried and A_BASELINE not in t.user_attrs
        )  # the baselines are extra: a budget of 20 trials runs 20 trials of the sweep
        if budget is not None and used >= budget:
            return False
        return any(t.state == TrialState.WAITING for t in trials) or self.sweep.mode == "search"

    def finished(self, budget: int | None) -> bool:
        trials = real_trials(self.study)
        if any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
            return False
        return self.sweep.mode != "search" or (budget is not None and not self._has_work(budget))

    def _error(self, number: int) -> str:
        return str(self.study.get_trials(deepcopy=False)[number].user_attrs.get(A_ERROR, "unknown"))

    # ------------------------------------------------------------------------------------------------- trials

    def _objective(self, trial: optuna.Trial) -> float:
        self.gate.release()  # the trial is taken: other workers may take theirs
        overrides = self._overrides(trial)
        if overrides is None:
            trial.set_user_attr(A_SPARE, True)
            raise optuna.TrialPruned("no grid point left for this worker")
        self.ran.append(trial.number)
        run_dir = self._run_dir(trial)
        trial.set_user_attr(A_OVERRIDES, overrides)
        trial.set_user_attr(A_RUN_DIR, str(_relative(run_dir, self.folder.path)))
        trial.set_user_attr(A_WORKER, self.worker)
        shown = " ".join(f"{k}={short_value(v)}" for k, v in overrides.items()) or "(base config)"
        if A_BASELINE in trial.user_attrs:
            name = trial.user_attrs[A_BASELINE]
            shown = f"{'unimodal ' if name in UNIMODAL_HEADS else ''}baseline {name}"
        retry = trial.user_attrs.get(A_RETRY_OF)
        self.log(
            f"trial {trial.number} started: {shown}" + (f" (again, was trial {retry})" if retry is not None else "")
        )
        start = time.perf_counter()
        try:
            value, result = self._train(trial, overrides, run_dir)
        except optuna.TrialPruned as e:
            trial.set_user_attr(A_RESULT, _partial_result(run_dir, self.metric, time.perf_counter() - start))
            self.log(f"trial {trial.number} {e}")
            raise
        except KeyboardInterrupt:
            requeue(self.study, trial)  # type: ignore[arg-type]
            self.log(f"trial {trial.number} interrupted; queued again (run the sweep again to resume)")
            raise
        except Exception as e:
            trial.set_user_attr(A_ERROR, f"{type(e).__name__}: {e}"[:2000])
            if run_dir.is_dir():
                (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            self.log(f"trial {trial.number} failed: {type(e).__name__}: {e}")
            raise
        result["seconds"] = time.perf_counter() - start + result.pop("resumed_seconds")
        trial.set_user_attr(A_RESULT, result)
        best = best_trial(self.study, self.metric)
        best_text = "" if best is None else f" (best so far {best.value:.4f}, trial {best.number})"
        self.log(f"trial {trial.number} done: val {self.metric} {value:.4f} in {result['seconds']:.1f}s{best_text}")
        return value

    def _overrides(self, trial: optuna.Trial) -> dict[str, Any] | None:
        """The trial's overrides: a baseline's, its grid point, or values suggested by the sampler (``None``: a spare
        trial)."""
        baseline = trial.user_attrs.get(A_BASELINE)
        if baseline is not None:  # no Optuna parameters: the sampler and parameter importance see sweep trials only
            if baseline not in self.sweep.baselines:
                raise SweepError(f"baseline {baseline!r} is not one of this sweep's ({list(self.sweep.baselines)})")
            return dict(self.sweep.baselines[baseline])
        if self.sweep.mode != "search":
            point = trial.user_attrs.get(A_POINT)
            if point is None:
                return None
            for key in self.sweep.keys:  # records the point's parameters in Optuna (fixed when it was queued)
                trial.suggest_categorical(key, self.choices[key])
            return dict(self.sweep.points[int(point)])
        out = {}
        for key, param in self.sweep.spec.search.params.items():  # type: ignore[union-attr]
            if param.type == "categorical":
                from mmfuse.sweep.study import encode

                encoded = [encode(c) for c in param.choices or []]
                picked = trial.suggest_categorical(key, list(dict.fromkeys(encoded)))
                out[key] = (param.choices or [])[encoded.index(picked)]
            elif param.type == "int":
                step = int(param.step or 1)
                out[key] = trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)  # type: ignore[arg-type]
            else:
                out[key] = trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)  # type: ignore[arg-type]
        return out

    def _run_dir(self, trial: optuna.Trial) -> Path:
        """A retried trial continues in the interrupted trial's folder; others get ``trials/trial-NNNN``."""
        earlier = trial.user_attrs.get(A_RUN_DIR)
        if trial.user_attrs.get(A_RETRY_OF) is not None and earlier:
            path = Path(earlier)
            return path if path.is_absolute() else self.folder.path / path
        return self.folder.trials / f"trial-{trial.number:04d}"

    def _train(self, trial: optuna.Trial, overrides: dict[str, Any], run_dir: Path) -> tuple[float, dict[str, Any]]:
        from mmfuse.engine.classifier import MultimodalClassifier

        cfg = self.sweep.trial_config(overrides, run_dir)
        splits = self.splits.get(cfg.data)  # type: ignore[arg-type]
        resume = _resumable(run_dir) if trial.user_attrs.get(A_RETRY_OF) is not None else None
        baseline = A_BASELINE in trial.user_attrs  # a fixed reference: never pruned, and no part of the pruner's median
        for action in resume.actions if resume is not None else []:
            self.log(f"trial {trial.number}: {action}")
        if resume is not None and not baseline:
            for record in resume.history:  # the epochs before the checkpoint, for the pruner
                value = record["val"].get(self.metric)
                if value is not None:
                    trial.report(float(value), step=int(record["epoch"]))
        clf = MultimodalClassifier(cfg)
        clf.fit(
            splits["train"], splits["val"], callbacks=[] if baseline else [PruneOnEpoch(trial, self.metric)],
            resume=run_dir if resume is not None else None,
        )  # fmt: skip
        summary = clf.summary
        value = summary.get("best_value")
        if value is None or math.isnan(float(value)):
            raise ValueError(
                f"val {self.metric} is undefined for this trial (e.g. AUROC with one class in val); pick another "
                "`metric` for the sweep"
            )
        _save_val_predictions(clf, splits["val"], run_dir)
        result = {
            "best_epoch": summary.get("best_epoch"),
            "epochs_run": summary.get("epochs_run"),
            "status": summary.get("status"),
            "val": headline(summary.get("val") or {}),
            # the training time of the epochs before the interruption, which the trial's time includes
            "resumed_seconds": float(resume.state["loop"].get("seconds", 0.0)) if resume is not None else 0.0,
        }
        return float(value), result

    # ------------------------------------------------------------------------------------------------- results

    def test_selected(self) -> dict[str, Any] | None:
        """Evaluates the trial chosen on validation on the test split (once per selected trial)."""
        best = best_trial(self.study, self.metric)
        if best is None:
            return None
        previous = self.folder.read_selected()
        if previous is not None and previous.get("trial") == best.number and previous.get("test") is not None:
            return previous
        rel = best.user_attrs.get(A_RUN_DIR, "")
        run_dir = Path(rel) if Path(rel).is_absolute() else self.folder.path / rel
        selected: dict[str, Any] = {
            "trial": best.number,
            "overrides": best.user_attrs.get(A_OVERRIDES),
            "run_dir": rel,
            "metric": self.metric,
            "val": best.value,
            "test": None,
        }
        cfg = self.sweep.trial_config(best.user_attrs.get(A_OVERRIDES) or {})
        test = self.splits.get(cfg.data).get("test")  # type: ignore[arg-type]
        if not (run_dir / "checkpoints" / "best").is_dir():
            selected["note"] = f"run folder {str(run_dir)!r} is not on this machine; run the sweep there to test it"
        elif test is None or not test.report.labeled:
            selected["note"] = "the data has no labeled test split"
        else:
            from mmfuse.engine.classifier import MultimodalClassifier

            # the trials are trained: missing test images are counted in the result rather than an error here
            result = MultimodalClassifier.load(run_dir).evaluate(test, name="test", max_missing_images=1.0)
            selected["test"] = evaluation_scalars(result)
            self.log(f"selected trial {best.number} (val {self.metric} {best.value:.4f}): test {self.metric} "
                     f"{metric_text(selected['test'].get(self.metric))}")  # fmt: skip
        self.folder.selected.write_text(json.dumps(selected, indent=2, default=float) + "\n", encoding="utf-8")
        self.study.set_user_attr(S_SELECTED, selected)
        return selected

    def run_final(self) -> dict[str, Any] | None:
        """Trains the selected point with the sweep's ``seeds`` and its ``variants`` (what is not done yet);
        ``None`` when the sweep has neither, nothing was selected, or another worker is running them."""
        from filelock import FileLock, Timeout

        from mmfuse.sweep.final import FinalStage

        if not (self.sweep.spec.seeds or self.sweep.variants):
            return None
        best = best_trial(self.study, self.metric)
        selected = self.folder.read_selected()
        if best is None or selected is None:
            return None
        lock = FileLock(str(self.folder.path / "final.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.log("another worker is running the seeds and variants of the selected trial; run again to see them")
            return None
        try:
            selected = {**selected, "result": best.user_attrs.get(A_RESULT) or {}}
            return FinalStage(self.sweep, self.folder.path, self.metric, self.splits, selected, self.log).run()
        finally:
            lock.release()

    def write_table(self) -> pd.DataFrame:
        from mmfuse.sweep.final import read_final, summary_lines

        selected = self.folder.read_selected()
        frame = trials_frame(self.study, self.metric, self.sweep.keys, selected)
        final = read_final(self.folder.path) if self.sweep.spec.seeds or self.sweep.variants else None
        lines = [*_summary_lines(frame, self.metric, selected), *summary_lines(final)]
        if "logistic" in self.sweep.spec.baseline_kinds:
            from mmfuse.sweep.reference import reference_line

            lines.append(reference_line(self.folder.path, self.metric))
        write_tables(frame, self.folder.path, f"Sweep {self.sweep.name}", lines)
        return frame


def sweep_table(folder: str | Path, storage: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The ranked table of an existing sweep folder (read from its study), and its ``sweep.json``.

    Raises:
        FileNotFoundError: not a sweep folder.
        SweepError: the study cannot be opened (pass ``storage`` when the sweep used one with a password).
    """
    sweep_dir = SweepDir.existing(folder)
    info = sweep_dir.info()
    if info.get("heads"):
        raise SweepError(
            f"{str(folder)!r} compares heads ({', '.join(info['heads'])}): its table is heads.md "
            f"(mmfuse.sweep.heads.heads_frame); pass {str(Path(folder) / 'heads' / '<head>')!r} for one head's trials"
        )
    study = load_study(sweep_dir.path, storage)
    return trials_frame(study, info["metric"], info.get("keys", []), sweep_dir.read_selected()), info


def load_study(folder: str | Path, storage: str | None = None) -> optuna.Study:
    """The Optuna study of a sweep folder (read-only use: tables, plots, ensembles)."""
    sweep_dir = SweepDir.existing(folder)
    info = sweep_dir.info()
    url = storage or info.get("storage")
    if url in (None, "study.db"):
        url = default_storage_url(sweep_dir.path)
    with _quiet_optuna():
        study = optuna.load_study(study_name=info["name"], storage=make_storage(url))
    if S_SWEEP not in study.user_attrs:
        raise SweepError(f"the study {info['name']!r} in {masked(url)!r} was not made by `mmfuse sweep`")
    return study


def _summary_lines(frame: pd.DataFrame, metric: str, selected: dict[str, Any] | None) -> list[str]:
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    shown = ", ".join(f"{n} {state}" for state, n in counts.items()) or "none yet"
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    lines = [f"Trials: {len(frame)} ({shown}). Ranked by validation {metric} ({direction} is better)."]
    baselines = frame[(frame["baseline"] != "") & (frame["state"] == "complete")] if not frame.empty else frame
    if not baselines.empty:
        pairs = zip(baselines["baseline"], baselines[f"val_{metric}"], strict=True)
        shown = ", ".join(f"{b} {metric_text(v)}" for b, v in pairs)
        what = "Unimodal baselines" if set(baselines["baseline"]) <= set(UNIMODAL_HEADS) else "Baselines"
        lines.append(f"{what} (the base config with only the head swapped; never selected): val {metric} {shown}.")
    if selected:
        test = selected.get("test") or {}
        tested = (f"test {metric} {metric_text(test.get(metric))} (measured on the selected trial only)" if test
                  else selected.get("note", "not tested yet"))  # fmt: skip
        lines.append(
            f"Selected on validation: trial {selected['trial']} (val {metric} {metric_text(selected['val'])}); "
            f"{tested}."
        )
    return lines


def _save_val_predictions(clf: Any, val: Split, run_dir: Path) -> None:
    """The best checkpoint's validation probabilities (for ensembles, without loading the model again)."""
    proba = clf.predict_proba(val)
    ids = np.array([e.id for e in val.examples])
    labels = np.array([clf.label_map.encode(e.label) for e in val.examples])
    np.savez(run_dir / VAL_PREDICTIONS, ids=ids, proba=proba, labels=labels, classes=np.array(clf.classes))


def _resumable(run_dir: Path) -> Committed | None:
    """What an interrupted trial's folder holds after its last committed epoch (the epoch records, for the pruner;
    the training time so far), repaired first if a kill left a checkpoint half saved; ``None``: start afresh."""
    from mmfuse.engine.checkpoint import CheckpointError, committed, recover_run
    from mmfuse.engine.run_dir import RunDir

    run = RunDir(run_dir)
    if not run.config.is_file():
        return None
    try:
        actions = recover_run(run)
        found = committed(run)
    except (FileNotFoundError, CheckpointError, KeyError, ValueError):
        return None
    if found is not None:
        found.actions = actions
    return found


def _partial_result(run_dir: Path, metric: str, seconds: float) -> dict[str, Any]:
    from mmfuse.engine.run_dir import RunDir

    history = RunDir(run_dir).history()
    best = [r for r in history if r.get("best")]
    return {
        "best_epoch": best[-1]["epoch"] if best else None,
        "epochs_run": len(history),
        "status": "pruned",
        "seconds": seconds,
        "val": headline(best[-1]["val"]) if best else {},
    }


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path.resolve()


@contextmanager
def _quiet_optuna():
    """Optuna's own per-trial log lines and transformers' weight-loading bars off (the worker logs one line per
    trial event instead), restored after."""
    from transformers.utils import logging as hf_logging

    level = optuna.logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def trial_configs(folder: str | Path, numbers: Sequence[int] | None = None) -> dict[int, TrainConfig]:
    """The configs of a sweep's trials as they were run (from their run folders)."""
    from mmfuse.config import load_config

    sweep_dir = SweepDir.existing(folder)
    out = {}
    for path in sorted(sweep_dir.trials.glob("trial-*")):
        number = int(path.name.split("-")[1])
        if (numbers is None or number in numbers) and (path / "config.yaml").is_file():
            out[number] = load_config(path / "config.yaml")
    return out
