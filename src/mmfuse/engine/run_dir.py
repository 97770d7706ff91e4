"""The run folder of a training run (what a run shows on the console and in its log is
:class:`mmfuse.progress.Reporter`).

Layout::

    <out_dir>/<name>/
        config.yaml            the resolved config (every default filled in)
        label_map.json         class names in id order
        metrics.jsonl          one JSON line per epoch: train loss, val metrics, lr, examples/s, time
        checkpoints/best/      model.safetensors + meta.json
        checkpoints/last/      the same + training_state.pt, for --resume
        train.log              everything the run reported
        summary.json           best epoch, its val metrics, threshold, test metrics, status
        tensorboard/           TensorBoard event files (train.report_to naming tensorboard)
        mlflow_run.json        the MLflow run id, which a resume continues (train.report_to naming mlflow)

``metrics.jsonl`` and ``summary.json`` are written whole to a ``.tmp`` sibling and renamed into place, so a reader
(or a crash) never sees half a file; how a run folder stays resumable whatever moment the process dies is in
:mod:`mmfuse.engine.checkpoint`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmfuse._writable import atomic_path, check_writable, unwritable
from mmfuse._writable import write_atomic as write_atomic_file
from mmfuse.config import RunConfig

RUN_FOLDER_FIX = "set run.out_dir to a writable folder (run.out_dir=PATH on the command line)"
"""How to write a run elsewhere, as every refusal of an unwritable run folder says it."""


class RunExistsError(ValueError):
    """The run folder exists already and holds a run."""


def check_run_folder(path: str | Path) -> Path:
    """Makes ``path`` (a run folder, or ``run.out_dir`` before the run's name is known) and proves it writable,
    before any data is read or encoder loaded.

    Raises:
        UnwritableError: a read-only filesystem, no write permission, or no space left (a ``ValueError`` that
            names the folder, the reason and the fix).
    """
    return check_writable(path, what="run folder", fix=RUN_FOLDER_FIX)


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
            UnwritableError: the folder cannot be written (see :func:`check_run_folder`).
        """
        path = Path(cfg.out_dir) / (cfg.name or default_name)
        if path.exists() and any(path.iterdir()):
            if not cfg.overwrite:
                raise RunExistsError(
                    f"run folder {str(path)!r} exists already; pick another run.name, set run.overwrite=true to "
                    f"replace it, or continue it with --resume {path}"
                )
            try:
                shutil.rmtree(path)
            except OSError as e:
                raise unwritable(e, path, what="run folder", fix=RUN_FOLDER_FIX) from None
        check_run_folder(path)
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

    def write_start(self, config_yaml: str, save_label_map: Callable[[Path], None]) -> None:
        """Writes ``config.yaml`` and ``label_map.json`` (through ``save_label_map(path)``), each whole under a
        temporary name first, so a full disk never leaves half a file for a later command to read.

        Raises:
            UnwritableError: no space left or no permission, naming the file and the fix.
        """
        write_atomic_file(self.config, config_yaml, what="run file", fix=RUN_FOLDER_FIX)
        with atomic_path(self.label_map, what="run file", fix=RUN_FOLDER_FIX) as tmp:
            save_label_map(tmp)

    def history(self) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl``."""
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def rewrite_metrics(self, records: list[dict[str, Any]], *, on_step: Callable[[str], None] | None = None) -> None:
        """Replaces ``metrics.jsonl`` by ``records``, one JSON line each (whole or not at all)."""
        write_atomic(self.metrics, "".join(json.dumps(r, default=float) + "\n" for r in records), on_step)

    def write_summary(self, summary: dict[str, Any], *, on_step: Callable[[str], None] | None = None) -> None:
        """Replaces ``summary.json`` (whole or not at all)."""
        write_atomic(self.summary, json.dumps(summary, indent=2, default=float) + "\n", on_step)

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text(encoding="utf-8")) if self.summary.is_file() else {}


def write_atomic(path: Path, text: str, on_step: Callable[[str], None] | None = None) -> None:
    """Writes ``text`` to ``path`` through :func:`mmfuse._writable.write_atomic`, by way of ``<path>.tmp``: a crash
    leaves the old file or the new one, never a part (at most a stray ``.tmp``, which resuming deletes).
    ``on_step("written")`` runs between the write and the rename (the trainer's fault-injection hook for crash tests).

    Raises:
        UnwritableError: it could not be written (naming the file, the reason and the fix).
    """
    tmp = path.with_name(path.name + ".tmp")
    write_atomic_file(path, text, what="run file", fix=RUN_FOLDER_FIX, tmp=tmp, on_step=on_step)


class Timer:
    """Wall time since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
