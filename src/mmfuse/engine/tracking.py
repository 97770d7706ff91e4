"""Experiment tracking: a run's numbers sent to TensorBoard and/or MLflow, as ``train.report_to`` asks (the Hugging
Face Trainer convention).

What is logged (by the :class:`~mmfuse.engine.trainer.Trainer`, on the main process only):

- the resolved config as hyperparameters, flattened to key paths (``optim.lr``, ``model.head.name``);
- every ``train.log_every_steps`` optimizer steps: ``train/loss`` (the mean loss of the batches since the last
  log, over every process) and ``train/lr`` (``train/lr_encoder`` too when encoders train), at that step;
- after each epoch: ``val/<metric>`` for every scalar validation metric, ``train/epoch_loss`` and ``epoch``;
- when ``fit`` evaluates a labeled test split: ``test/<metric>`` at the last step;
- MLflow only: ``summary.json`` and ``config.yaml`` of the run folder as artifacts; ``fit`` writes no HTML report,
  ``mmfuse report`` makes one from the run folder afterwards and adds it to the run's MLflow run (under ``report/``,
  :func:`log_to_training_run`).

Where: TensorBoard event files in ``<run folder>/tensorboard`` (``tensorboard --logdir runs``). MLflow: the
tracking server or store of ``$MLFLOW_TRACKING_URI``, else a SQLite store ``<run.out_dir>/mlflow.db`` with
artifacts in ``<run.out_dir>/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``); the
experiment is ``run.experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``mmfuse``; the run is named after the run
folder. A sweep's trials are MLflow runs nested under one run of the sweep (:func:`nested_under`).

Why our own small classes rather than accelerate's ``Accelerator(log_with=...)`` trackers: those live inside one
``Accelerator`` (made before the run folder has its name) and drive MLflow through its process-global active run,
while a sweep's parent run outlives every trial's Accelerator and the test metrics arrive after training ended. The
classes below call the libraries directly (``torch.utils.tensorboard.SummaryWriter``, ``mlflow.MlflowClient`` with
explicit run ids), so nothing here depends on, or disturbs, an MLflow run the caller may have active.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from mmfuse.config import TrainConfig

logger = logging.getLogger("mmfuse.engine")

INSTALL_HINT = 'pip install "mmfuse[track]"'
DEFAULT_EXPERIMENT = "mmfuse"
MLFLOW_RUN_FILE = "mlflow_run.json"  # in the run folder: the MLflow run a resume continues
# the package each tracker needs (import name, what to install)
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


class TrackerNotInstalledError(ValueError):
    """``train.report_to`` names a tracker whose package is not installed."""


class Tracker(Protocol):
    """One tracking backend: a run that receives hyperparameters, metrics and files."""

    def start(self, run_name: str, params: Mapping[str, Any], *, resumed_at: int | None = None) -> None:
        """Opens the run (``resumed_at``: the step a resumed run continues after; later events are stale)."""
        ...

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...


def check_installed(report_to: Sequence[str]) -> None:
    """Raises :class:`TrackerNotInstalledError` naming the extra when a tracker's package is missing."""
    missing = [_PACKAGES[name] for name in report_to if importlib.util.find_spec(_PACKAGES[name]) is None]
    if missing:
        raise TrackerNotInstalledError(
            f"train.report_to={list(report_to)} needs {' and '.join(missing)}, which is not installed; install the "
            f"tracking extra ({INSTALL_HINT}) or set train.report_to=none"
        )


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """``{"optim": {"lr": 0.001}}`` -> ``{"optim.lr": 0.001}``; lists, ``None`` and other values become text."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        elif isinstance(value, (bool, int, float, str)):
            out[path] = value
        else:
            out[path] = str(value)
    return out


def scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric entries of ``metrics`` (nested dicts and lists left out) as ``prefix/name``."""
    return {
        f"{prefix}/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }


def ended_status(error: BaseException) -> str:
    """The tracking status of a run that ended with ``error``: ``KILLED`` when it was stopped on purpose (Ctrl-C, a
    sweep's pruner), ``FAILED`` otherwise."""
    if not isinstance(error, Exception):
        return "KILLED"
    from optuna import TrialPruned

    return "KILLED" if isinstance(error, TrialPruned) else "FAILED"


# ----------------------------------------------------------------------------------------------------- backends


class TensorBoardTracker:
    """Event files in ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def _open(self, purge_step: int | None = None) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        return self._writer

    def start(self, run_name: str, params: Mapping[str, Any], *, resumed_at: int | None = None) -> None:
        # a resumed run hides the events an interrupted attempt logged after its last checkpoint (purge_step)
        writer = self._open(None if resumed_at is None else resumed_at + 1)
        # run_name ".": the hyperparameters go into the run's own folder, not a timestamped sub-run
        writer.add_hparams(dict(params), {}, run_name=".")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        writer = self._open()
        for name, value in metrics.items():
            writer.add_scalar(name, value, global_step=step)

    def log_artifact(self, path: Path) -> None:
        """TensorBoard keeps no files; they stay beside the event files in the run folder."""

    def finish(self, status: str = "FINISHED") -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MLflowTracker:
    """One MLflow run through ``mlflow.MlflowClient`` (explicit run id: no process-global active run).

    Args:
        tracking_uri: the tracking server or store.
        experiment: experiment name (created when absent, with ``artifact_location`` when given).
        parent_run_id: make the run a child of this one (``mlflow.parentRunId``: nested in the MLflow UI).
        artifact_location: where a newly created experiment keeps its artifacts (``None``: the store's default).
        run_file: a JSON file that records the run id (in the run folder), so that a resumed run continues the
            same MLflow run.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        parent_run_id: str | None = None,
        artifact_location: str | None = None,
        run_file: Path | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.parent_run_id, self.artifact_location, self.run_file = parent_run_id, artifact_location, run_file
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except MlflowException:  # another process created it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_name: str, params: Mapping[str, Any], *, resumed_at: int | None = None) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        items = [(k, str(v)) for k, v in params.items()]
        earlier = self._earlier_run() if resumed_at is not None else None
        if earlier is not None:
            self.run_id = earlier.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            kept = earlier.data.params  # MLflow parameters cannot change: log only new keys, name the changed ones
            changed = [f"{k} ({kept[k]} -> {v})" for k, v in items if k in kept and kept[k] != v[:MAX_PARAM_VAL_LENGTH]]
            if changed:
                logger.warning(
                    f"MLflow run {self.run_id} keeps the parameters it started with; changed on resume: "
                    f"{', '.join(changed)} (the resumed config is the run's config.yaml artifact)"
                )
            items = [(k, v) for k, v in items if k not in kept]
        else:
            tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {}
            run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            if self.run_file is not None:
                record = {"run_id": self.run_id}
                if urlsplit(self.tracking_uri).password is None:  # never a password in the run folder
                    record["tracking_uri"] = self.tracking_uri
                self.run_file.write_text(json.dumps(record) + "\n", encoding="utf-8")
        long = [k for k, v in items if len(v) > MAX_PARAM_VAL_LENGTH]
        if long:
            logger.warning(
                f"MLflow keeps at most {MAX_PARAM_VAL_LENGTH} characters of a parameter; cut: {', '.join(long)} "
                "(the whole config is the run's config.yaml artifact)"
            )
        batch = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in items]
        for i in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def _earlier_run(self) -> Any:
        """The MLflow run this run folder logged to before it was interrupted, when this store has it."""
        from mlflow.exceptions import MlflowException

        if self.run_file is None or not self.run_file.is_file():
            return None
        run_id = json.loads(self.run_file.read_text(encoding="utf-8"))["run_id"]
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            logger.warning(
                f"MLflow run {run_id} (from {self.run_file}) is not in {self.tracking_uri}; the resumed run starts a "
                "new MLflow run"
            )
            return None

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self._id(), metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self._id(), str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    def _id(self) -> str:
        assert self.run_id is not None, "start() first"
        return self.run_id


# ----------------------------------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class _Parent:
    tracking_uri: str
    experiment: str
    artifact_location: str | None
    run_id: str


_PARENT: ContextVar[_Parent | None] = ContextVar("mmfuse_tracking_parent", default=None)


def mlflow_target(out_dir: Path, experiment: str | None) -> tuple[str, str, str | None]:
    """``(tracking_uri, experiment, artifact_location)``: ``$MLFLOW_TRACKING_URI`` or a SQLite store in
    ``out_dir``; ``experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``mmfuse``."""
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, name, None
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}", name, (out / "mlartifacts").as_uri()


class Tracking:
    """The trackers of one run, driven together; empty (every call a no-op) without ``train.report_to`` or off the
    main process."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)
        self.step = 0  # the last step logged: where final (test) metrics go

    @classmethod
    def for_run(cls, config: TrainConfig, run_path: Path, *, main: bool = True) -> Tracking:
        """The trackers ``config.train.report_to`` names, for the run folder ``run_path`` (none off the main
        process). Inside :func:`nested_under`, the MLflow run is a child of the sweep's run, in its store.

        Raises:
            TrackerNotInstalledError: a tracker's package is missing.
        """
        names = config.train.report_to
        check_installed(names)
        if not main:
            return cls()
        trackers: list[Tracker] = []
        if "tensorboard" in names:
            trackers.append(TensorBoardTracker(Path(run_path) / "tensorboard"))
        if "mlflow" in names:
            parent = _PARENT.get()
            if parent is not None:
                child = MLflowTracker(
                    parent.tracking_uri, parent.experiment, parent_run_id=parent.run_id,
                    artifact_location=parent.artifact_location, run_file=Path(run_path) / MLFLOW_RUN_FILE,
                )  # fmt: skip
                trackers.append(child)
            else:
                uri, experiment, artifacts = mlflow_target(config.run.out_dir, config.run.experiment)
                run_file = Path(run_path) / MLFLOW_RUN_FILE
                trackers.append(MLflowTracker(uri, experiment, artifact_location=artifacts, run_file=run_file))
        return cls(trackers)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, run_name: str, config: TrainConfig, *, resumed_at: int | None = None) -> None:
        """Opens every tracker's run with the config as hyperparameters; ``resumed_at``: the optimizer step a resumed
        run continues after (TensorBoard hides later events of the interrupted attempt; MLflow continues the run
        recorded in the run folder, whose metric history keeps them)."""
        params = flatten(config.to_dict())
        self.step = resumed_at or 0
        for tracker in self.trackers:
            tracker.start(run_name, params, resumed_at=resumed_at)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}  # undefined metrics (one class) stay out
        if not metrics:
            return
        self.step = max(self.step, step)
        for tracker in self.trackers:
            tracker.log_metrics(step, metrics)

    def log_artifact(self, path: Path) -> None:
        if Path(path).is_file():
            for tracker in self.trackers:
                tracker.log_artifact(Path(path))

    def finish(self, status: str = "FINISHED") -> None:
        for tracker in self.trackers:
            tracker.finish(status)

    def log_final(self, metrics: Mapping[str, Any], *, prefix: str = "test", artifact: Path | None = None) -> None:
        """Metrics that arrive after training ended (the test split's) at the last step, and the file that now holds
        them (``summary.json``, logged again); the runs stay finished."""
        self.log_metrics(self.step, scalars(metrics, prefix))
        if artifact is not None:
            self.log_artifact(artifact)
        for tracker in self.trackers:
            if isinstance(tracker, TensorBoardTracker):
                tracker.finish()  # flush and close the event file reopened for them


def log_to_training_run(
    run_path: Path, config: TrainConfig, files: Sequence[Path], *, artifact_path: str = "report"
) -> str | None:
    """Adds ``files`` (a run's HTML report, made after training) to the MLflow run the run folder logged to while
    training (its ``mlflow_run.json``: the run id and, unless it held a password, the tracking URI; else the store
    ``config`` and ``$MLFLOW_TRACKING_URI`` name). The run keeps its status.

    Returns:
        ``None`` when the run logged to no MLflow run; else a line saying where the files went, or why they could
        not go there (mlflow not installed, the run not in the store): the caller shows it.
    """
    run_file = Path(run_path) / MLFLOW_RUN_FILE
    if not run_file.is_file():
        return None
    names = ", ".join(Path(f).name for f in files)
    if importlib.util.find_spec("mlflow") is None:
        return f"{names} not added to the run's MLflow run: mlflow is not installed ({INSTALL_HINT})"
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    record = json.loads(run_file.read_text(encoding="utf-8"))
    run_id = record["run_id"]
    uri = record.get("tracking_uri") or mlflow_target(config.run.out_dir, config.run.experiment)[0]
    client = MlflowClient(tracking_uri=uri)
    shown = _without_password(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        return (
            f"{names} not added to MLflow run {run_id}: it is not in {shown} (set MLFLOW_TRACKING_URI to the store "
            "the run logged to)"
        )
    for file in files:
        client.log_artifact(run_id, str(file), artifact_path)
    return f"added {names} to MLflow run {run_id} in {shown} ({artifact_path}/)"


def _without_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


@contextlib.contextmanager
def nested_under(config: TrainConfig, out_dir: Path, run_name: str) -> Iterator[str | None]:
    """While open, MLflow runs of :meth:`Tracking.for_run` are children of one run named ``run_name`` (a sweep's),
    in the store ``config`` and ``out_dir`` choose; yields its run id (``None`` when ``config`` does not log to
    MLflow, and then nothing is nested)."""
    if "mlflow" not in config.train.report_to:
        yield None
        return
    check_installed(["mlflow"])
    uri, experiment, artifacts = mlflow_target(out_dir, config.run.experiment)
    parent = MLflowTracker(uri, experiment, artifact_location=artifacts)
    parent.start(run_name, {})
    token = _PARENT.set(_Parent(uri, experiment, artifacts, parent.run_id))  # type: ignore[arg-type]
    status = "FAILED"
    try:
        yield parent.run_id
        status = "FINISHED"
    finally:
        _PARENT.reset(token)
        parent.finish(status)
