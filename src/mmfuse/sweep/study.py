"""The Optuna study behind a sweep: its storage, creation and queue, and what survives a worker that dies.

Every sweep, grid or search, is one Optuna study in an RDB storage: by default a SQLite file in the sweep folder,
or any URL Optuna's ``RDBStorage`` takes (``postgresql://...``, ``mysql+pymysql://...``), which several workers on
several machines share. ``postgresql://`` goes through SQLAlchemy's default driver when it is installed, else through
psycopg 3 (the ``postgres`` extra; ``postgresql+psycopg://`` names it).

- **Unimodal baselines** (``text_only``, ``image_only`` on the base config) are enqueued first, by the worker that
  creates the study, as waiting trials that carry the baseline's name and no parameters.
- **Grids and lists** are enqueued once, by the worker that creates the study, as waiting trials (each carries its
  point's index and parameters); a worker takes one with ``study.ask()``, which moves it from waiting to running in
  one guarded update, so no point runs twice. Later workers wait until the queue is complete.
- **SQLite** does not lock rows, so on a SQLite storage workers on this machine also take a file lock beside the
  database around the few steps that pick or create a trial (``<db>.lock``). Optuna itself advises against SQLite
  for many workers; for a handful it is fine, and for several machines use PostgreSQL or MySQL.
- **A new database** gets Optuna's tables from whichever worker comes first; the others, failing to create the same
  tables at the same moment, open the storage again (see :func:`make_storage`).
- **Interrupted trials are re-queued**, never silently lost: a worker stopped by Ctrl-C re-queues its trial before it
  exits; a trial whose worker was killed is found either by its process being gone (same host) or by Optuna's
  heartbeat going stale (any host), marked failed, and re-queued with the same parameters, resuming from the
  trial's last checkpoint. Finished trials are never run again.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from mmfuse.sweep.spec import Sweep, SweepError

logger = logging.getLogger("mmfuse.sweep")

STUDY_DB = "study.db"
HEARTBEAT_S = 30
"""Seconds between heartbeats of a running trial."""
GRACE_S = 180
"""A running trial without a heartbeat for this long belongs to a dead worker and is re-queued."""
OPEN_ATTEMPTS = 5
"""Tries to open a storage whose tables another worker may be creating at the same moment."""
READY_WAIT_S = 120.0
"""How long a joining worker waits for the creating worker to finish queueing a grid."""

# Trial and study attributes (Optuna user attributes), one namespace.
A_POINT = "mmfuse.point"
A_OVERRIDES = "mmfuse.overrides"
A_RUN_DIR = "mmfuse.run_dir"
A_WORKER = "mmfuse.worker"
A_RESULT = "mmfuse.result"
A_ERROR = "mmfuse.error"
A_RETRY_OF = "mmfuse.retry_of"
A_SPARE = "mmfuse.spare"
A_BASELINE = "mmfuse.baseline"
S_FINGERPRINT = "mmfuse.fingerprint"
S_SWEEP = "mmfuse.sweep"
S_METRIC = "mmfuse.metric"
S_READY = "mmfuse.ready"
S_SELECTED = "mmfuse.selected"


def default_storage_url(sweep_dir: Path) -> str:
    """The embedded storage: ``sqlite:///<sweep_dir>/study.db``."""
    return f"sqlite:///{(Path(sweep_dir) / STUDY_DB).resolve()}"


def masked(url: str) -> str:
    """The URL with its password hidden (for messages and files)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is reported by make_storage
        return url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (``None`` for other databases and in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a URL: not SQLite
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


class Gate:
    """A lock around picking a trial, across processes on this machine (SQLite storages only; others no-op).

    ``release`` may be called while not held (the objective releases it as soon as its trial is taken).
    """

    def __init__(self, url: str) -> None:
        from filelock import FileLock

        db = sqlite_file(url)
        self._lock = FileLock(str(db) + ".lock") if db is not None else None
        self.held = False

    def acquire(self) -> None:
        if self._lock is not None and not self.held:
            self._lock.acquire()
        self.held = True

    def release(self) -> None:
        if self._lock is not None and self.held:
            self._lock.release()
        self.held = False

    @contextmanager
    def hold(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


POSTGRES_EXTRA = 'pip install "mmfuse[postgres]" (psycopg 3)'


def storage_url(url: str) -> tuple[str, str | None]:
    """The URL SQLAlchemy opens for ``url``, and a note when it differs.

    ``postgresql://`` names no driver: SQLAlchemy takes its default (psycopg2 before SQLAlchemy 2.1, psycopg 3
    since). When that one is not installed and the other is (psycopg 3 is the ``postgres`` extra), the URL names the
    other (``postgresql+psycopg://``). Other URLs are returned as they are (a malformed one is reported by
    :func:`make_storage`).

    Raises:
        SweepError: a PostgreSQL URL whose driver is not installed.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            return url, None
        driver = parsed.get_driver_name()
    except Exception:  # not a URL, or an unknown dialect: make_storage says so
        return url, None
    if driver not in ("psycopg", "psycopg2") or _importable(driver):
        return url, None
    other = "psycopg2" if driver == "psycopg" else "psycopg"
    if "+" not in parsed.drivername and _importable(other):  # postgresql://, and SQLAlchemy's default is missing
        mapped = parsed.set(drivername=f"postgresql+{other}").render_as_string(hide_password=False)
        return mapped, (
            f"storage {masked(url)}: {driver} (SQLAlchemy's default driver for postgresql://) is not installed; "
            f"using {other} (postgresql+{other}://)"
        )
    fix = POSTGRES_EXTRA
    if "+" in parsed.drivername and driver == "psycopg2":
        fix = f"pip install psycopg2 (or {POSTGRES_EXTRA} and write postgresql+psycopg://)"
    raise SweepError(
        f"the sweep storage {masked(url)!r} needs the PostgreSQL driver {driver}, which is not installed: {fix}"
    )


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """Opens (creating its tables if needed) the RDB storage at ``url``, with heartbeats and re-queueing of trials
    whose worker died.

    Workers started at once on a new database all try to create Optuna's tables; on PostgreSQL all but one fail on
    a duplicate table or type. Those open the storage again (up to ``OPEN_ATTEMPTS`` times): by then the tables
    exist.

    Raises:
        SweepError: a malformed URL, a missing database driver, or a database that cannot be reached.
    """
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    engine_url = storage_url(url)[0]
    db = sqlite_file(url)
    kwargs: dict[str, Any] = {}
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}  # seconds a writer waits for another's transaction
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    engine_url,
                    engine_kwargs=kwargs,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=requeue,
                )
        except (IntegrityError, ProgrammingError) as e:  # another worker created the same table first
            if attempt == OPEN_ATTEMPTS:
                raise _open_error(url, e) from None
            logger.info("opening %s: %s; trying again", masked(url), type(e.orig).__name__)
            time.sleep(0.2 * attempt)  # the other worker commits its tables meanwhile
        except Exception as e:  # SQLAlchemy and driver errors of many kinds
            raise _open_error(url, e) from None
    raise AssertionError("unreachable")


def _open_error(url: str, e: Exception) -> SweepError:
    return SweepError(
        f"cannot open the sweep storage {masked(url)!r}: {type(e).__name__}: {e}; pass a URL like "
        f"sqlite:////abs/path/study.db, postgresql://user:pass@host/db (needs psycopg: {POSTGRES_EXTRA}) or "
        "mysql+pymysql://user:pass@host/db (needs PyMySQL)"
    )


def point_params(sweep: Sweep) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Each grid/list point as Optuna parameters, and each parameter's choices.

    Every point gets every key of the sweep (a key a list entry does not set takes the base config's value), so
    parameter importance sees one search space. Values that Optuna cannot store as a categorical choice (lists,
    mappings) are stored as their JSON text.
    """
    base = sweep.base.to_dict()
    from mmfuse.config import resolve_key

    params: list[dict[str, Any]] = []
    for point in sweep.points:
        row = {}
        for key in sweep.keys:
            row[key] = encode(point[key]) if key in point else encode(_lookup(base, resolve_key(key)))
        params.append(row)
    choices = {key: list(dict.fromkeys(row[key] for row in params)) for key in sweep.keys}
    return params, choices


def encode(value: Any) -> Any:
    """A value as an Optuna categorical choice: itself when it is a scalar, else its JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def _lookup(data: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return "default"
        data = data[part]
    return data


def open_study(
    sweep: Sweep,
    storage: optuna.storages.RDBStorage,
    gate: Gate,
    *,
    metric: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """Creates the sweep's study (queueing a grid or list), or joins the existing one.

    Returns:
        The study, and whether this worker created it.

    Raises:
        SweepError: the existing study belongs to another sweep (other base config, points or search space).
    """
    with gate.hold():
        try:
            study = optuna.create_study(
                storage=storage, study_name=sweep.name, direction=direction, sampler=sampler, pruner=pruner
            )
        except DuplicatedStudyError:
            study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=pruner)
            created = False
        else:
            created = True
            study.set_user_attr(S_FINGERPRINT, sweep.fingerprint())
            study.set_user_attr(S_METRIC, metric)
            study.set_user_attr(S_SWEEP, sweep.to_dict())
            _enqueue_baselines(study, sweep)
            _enqueue_points(study, sweep)
            study.set_user_attr(S_READY, True)
    if not created:
        _wait_ready(study, sweep, storage)
    return study, created


def _enqueue_baselines(study: optuna.Study, sweep: Sweep, only: set[str] | None = None) -> None:
    for name in sweep.baselines:
        if only is None or name in only:
            study.enqueue_trial({}, user_attrs={A_BASELINE: name})


def _enqueue_points(study: optuna.Study, sweep: Sweep, only: set[int] | None = None) -> None:
    params, _ = point_params(sweep)
    for i, row in enumerate(params):
        if only is None or i in only:
            study.enqueue_trial(row, user_attrs={A_POINT: i})


def _wait_ready(study: optuna.Study, sweep: Sweep, storage: optuna.storages.RDBStorage) -> None:
    """Waits for the creating worker to finish queueing; checks that the study is this sweep's."""
    deadline = time.monotonic() + READY_WAIT_S
    attrs = study.user_attrs
    while not attrs.get(S_READY) and time.monotonic() < deadline:
        time.sleep(0.5)
        attrs = study.user_attrs
    theirs = attrs.get(S_FINGERPRINT)
    if theirs is not None and theirs != sweep.fingerprint():
        source = (attrs.get(S_SWEEP) or {}).get("source")
        origin = f" (from {source!r})" if source else ""
        raise SweepError(
            f"the study {sweep.name!r} in this storage was made by a different sweep{origin}: another base config, "
            "encoders, grid, list or search space. Give this sweep another `name:` (or --out folder), or delete the "
            "old sweep folder to start over"
        )
    if not attrs.get(S_READY):  # the creating worker died while queueing: queue what is missing
        logger.warning("the study %r was never completely queued; queueing the missing points", sweep.name)
        trials = study.get_trials(deepcopy=False)
        have = {t.user_attrs.get(A_POINT) for t in trials}
        if theirs is None:
            study.set_user_attr(S_FINGERPRINT, sweep.fingerprint())
            study.set_user_attr(S_SWEEP, sweep.to_dict())
        _enqueue_baselines(study, sweep, only=set(sweep.baselines) - {t.user_attrs.get(A_BASELINE) for t in trials})
        _enqueue_points(study, sweep, only={i for i in range(len(sweep.points)) if i not in have})
        study.set_user_attr(S_READY, True)


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queues a fresh trial with the parameters of the failed ``trial`` (interrupted, or its worker died); it resumes
    from the interrupted trial's last checkpoint."""
    attrs = {A_RETRY_OF: trial.number}
    for key in (A_POINT, A_BASELINE, A_RUN_DIR):
        if key in trial.user_attrs:
            attrs[key] = trial.user_attrs[key]
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    logger.info("trial %d was interrupted; queued again", trial.number)


def worker_id() -> dict[str, Any]:
    """This process: host, pid, and start time (so a reused pid is not taken for this process)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:  # no psutil, or no such process
        return None


def _alive(worker: dict[str, Any]) -> bool:
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    started = worker.get("started")
    now = _start_time(pid)
    return started is None or now is None or abs(now - float(started)) < 1.0


def reclaim_dead(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Fails and re-queues running trials whose worker process on this host is gone (a killed sweep).

    Trials of workers on other hosts are left to the heartbeat. Returns the numbers of the trials reclaimed.
    """
    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    reclaimed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(A_WORKER)
        if not isinstance(worker, dict) or worker.get("host") != host or _alive(worker):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, A_ERROR, f"worker process {worker.get('pid')} on {host} died")
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker reclaimed it first
        requeue(study, storage.get_trial(trial_id))
        reclaimed.append(trial.number)
    return reclaimed


def reclaim_stale(study: optuna.Study) -> list[tuple[int, str]]:
    """Fails and re-queues running trials without a heartbeat for ``GRACE_S`` seconds (a worker on any host that
    died), as Optuna does before each trial it starts; called before looking for work too, because a worker that
    finds no waiting trial starts none. Returns each reclaimed trial's number and its worker's host.
    """
    running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # one worker wins each trial; its callback (requeue) queues it
    reclaimed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        # a trial that failed on its own error meanwhile carries the error; a stale one does not
        if trial.number in running and A_ERROR not in trial.user_attrs:
            worker = running[trial.number].user_attrs.get(A_WORKER)
            reclaimed.append((trial.number, str(worker.get("host", "?")) if isinstance(worker, dict) else "?"))
    return reclaimed
