"""The run folder, and the console/log output of a run.

Layout::

    <out_dir>/<name>/
        config.yaml            the resolved config (every default filled in)
        label_map.json         class names in id order
        metrics.jsonl          one JSON line per epoch: train loss, val metrics, lr, examples/s, time
        checkpoints/best/      model.safetensors + meta.json (+ training_state.pt)
        checkpoints/last/      the same, for --resume
        train.log              everything the run reported
        summary.json           best epoch, its val metrics, threshold, test metrics, status
        tensorboard/           TensorBoard event files (train.report_to naming tensorboard)
        mlflow_run.json        the MLflow run id, which a resume continues (train.report_to naming mlflow)
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmfuse.config import RunConfig
from mmfuse.engine.progress import LineClock, Progress

logger = logging.getLogger("mmfuse.engine")


class RunExistsError(ValueError):
    """The run folder exists already and holds a run."""


class RunDir:
    """Paths and files of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    label_map = property(lambda self: self.path / "label_map.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    log = property(lambda self: self.path / "train.log")
    summary = property(lambda self: self.path / "summary.json")
    best = property(lambda self: self.path / "checkpoints" / "best")
    last = property(lambda self: self.path / "checkpoints" / "last")

    @classmethod
    def create(cls, cfg: RunConfig, default_name: str) -> RunDir:
        """Makes ``out_dir/name`` (``name`` defaults to ``default_name``).

        Raises:
            RunExistsError: the folder holds a run and ``overwrite`` is off.
        """
        path = Path(cfg.out_dir) / (cfg.name or default_name)
        if path.exists() and any(path.iterdir()):
            if not cfg.overwrite:
                raise RunExistsError(
                    f"run folder {str(path)!r} exists already; pick another run.name, set run.overwrite=true to "
                    f"replace it, or continue it with --resume {path}"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """An existing run folder (for resume, evaluate, predict).

        Raises:
            FileNotFoundError: not a run folder.
        """
        run = cls(path)
        if not run.config.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a run folder (no config.yaml there); pass the folder `mmfuse train` wrote"
            )
        return run

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def history(self) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl``."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """Replaces ``metrics.jsonl`` (on resume: drops records of epochs after the last checkpoint)."""
        self.metrics.write_text("".join(json.dumps(r, default=float) + "\n" for r in records), encoding="utf-8")

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary.write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text(encoding="utf-8")) if self.summary.is_file() else {}


class Reporter:
    """What a run shows: progress and messages on the console (unless quiet or not the main process), and
    every message and progress line in the run's log file.

    Args:
        quiet: no progress bars and no console messages (the log still gets them; off a terminal the periodic
            progress lines stay on the console too, see :mod:`mmfuse.engine.progress`).
        main: whether this is the main process (others stay silent).

    Raises:
        ValueError: a bad ``$MMFUSE_PROGRESS_SECONDS``.
    """

    def __init__(self, quiet: bool = False, main: bool = True) -> None:
        self.quiet = quiet or not main
        self.main = main
        self.lines = LineClock.from_env() if main else LineClock(None)  # one pace for all the run's steps

    def info(self, message: str) -> None:
        logger.info(message)
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def warning(self, message: str) -> None:
        logger.warning(message)
        if self.main:
            tqdm.write(f"warning: {message}", file=sys.stderr)

    def bar(self, total: int, desc: str, unit: str = "ex") -> Progress:
        """Progress of one step: a bar on a terminal (unless quiet), periodic lines off one and in the log."""
        return Progress(total, desc, unit=unit, quiet=self.quiet, enabled=self.main, lines=self.lines)

    @contextmanager
    def log_to(self, path: Path) -> Iterator[None]:
        """Also writes the ``mmfuse`` loggers' records to ``path`` while the context is open (main process)."""
        if not self.main:
            yield
            return
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("mmfuse")
        old_level = root.level
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            handler.close()


class Timer:
    """Wall time since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
