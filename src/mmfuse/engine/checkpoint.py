"""Checkpoints of a training run: the saved model (:mod:`mmfuse.model.checkpoint`) plus what resuming needs, and the
epoch commit that keeps a run folder resumable whenever the process dies.

``training_state.pt`` (checkpoints that can resume a run) holds the optimizer, scheduler, RNG states, loop counters
and the run's epoch records so far (``history``, the lines of ``metrics.jsonl`` as JSON text), only tensors and plain
Python values, loaded with ``torch.load(weights_only=True)``: nothing is unpickled. The model part (weights,
``meta.json``, loading) is :mod:`mmfuse.model.checkpoint`, imported here for the trainer.

The epoch commit
----------------
:func:`commit_epoch` writes what epoch ``E`` leaves, in this order, on the main process:

1. ``checkpoints/last`` (weights, ``meta.json``, ``training_state.pt`` with the loop counters and every epoch
   record up to ``E``), by :func:`~mmfuse.model.checkpoint.save_checkpoint`: ``last.tmp`` written, ``last`` moved to
   ``last.old``, ``last.tmp`` renamed to ``last`` (**the commit point**: from here on, epoch ``E`` is done),
   ``last.old`` deleted;
2. ``checkpoints/best`` when ``E`` improved on the best epoch: a copy of ``last`` without the training state, the
   same way (``best.tmp``, ``best.old``);
3. ``metrics.jsonl``, rewritten whole from the records (``metrics.jsonl.tmp``, then renamed).

After the last epoch the trainer calibrates (``train.calibrate``: the temperature and threshold go into the
``meta.json`` of ``last`` and ``best``, each rewritten whole by :func:`~mmfuse.model.checkpoint.update_meta`), then
writes ``summary.json`` (``summary.json.tmp``, then renamed); ``fit`` rewrites it with the test metrics. Everything
after the commit point can be redone from ``last``: the best checkpoint of epoch ``E`` is ``last`` without its
training state, the metrics lines are its records, and the calibration and the summary are what ``--resume`` does
and writes when it finds nothing left to train. So :func:`recover_run` (``--resume`` calls it first) turns
every state a kill can leave into the state of an uninterrupted run after some epoch, and the resumed run ends
exactly like the uninterrupted one (final weights, ``metrics.jsonl``, ``summary.json`` with its threshold).

Each row: where the process died (the fault point of :func:`fault` that stops there), what the run folder then
holds while epoch E is being committed (B: an earlier best epoch), and what :func:`recover_run` makes of it;
the resumed run then continues after the epoch named last:

==================  ===============================================  =============================================
killed at           on disk                                          recovery, then training continues after
==================  ===============================================  =============================================
last:weights        last (E-1), a partial last.tmp                   delete last.tmp; after E-1 (E runs again)
last:written        last (E-1), a whole last.tmp                     delete last.tmp; after E-1
last:moved          no last; last.old (E-1), whole last.tmp (E)      last.tmp -> last, delete last.old, and the
                    (between the two renames)                        rows below; after E
last:replaced       last (E), last.old (E-1)                         delete last.old, and the rows below; after E
best:weights        last (E); best (B) or none, a partial best.tmp   delete best.tmp; best copied again from last
                                                                     (its loop.best_epoch is E); after E
best:written        last (E); best (B) or none, a whole best.tmp     the same
best:moved          last (E); no best; best.old (B), best.tmp (E)    best.tmp -> best, delete best.old; after E
best:replaced       last (E), best (E), best.old (B)                 delete best.old; after E
metrics:written     metrics.jsonl of E-1 epochs, metrics.jsonl.tmp   delete the tmp; metrics.jsonl rewritten from
                    (any step above: the E-1 lines only)             last's records; after E
(older mmfuse)      metrics.jsonl with a partial last line, or       metrics.jsonl rewritten from last's records
                    lines of epochs after last
(calibrating)       every epoch committed; last's and best's         nothing left to train: the resume calibrates
                    meta.json old or new (perhaps a .tmp-* beside)   again and writes the summary
summary:written     every epoch committed; summary.json.tmp, and     delete the tmp; nothing left to train: the
                    no summary.json or an older one                  resume writes it (an early stop is kept)
before the test     summary.json without the test metrics            the resume writes the summary, fit adds test
last:* of epoch 1   no last, perhaps last.tmp; no best, an empty     delete last.tmp; no epoch was committed: the run
                    metrics.jsonl                                    starts over in its folder, as a new run would
==================  ===============================================  =============================================

A write that fails (a full disk, a read-only folder) raises
:class:`~mmfuse.model.checkpoint.CheckpointWriteError` (an :class:`~mmfuse._writable.UnwritableError`: the CLI ends
with it, exit status 2) naming the path, the reason and the fix; what it half wrote
is deleted (or, where even that fails, is one of the states above), so ``--resume`` continues from the last
committed epoch once the disk has room.

Crash tests: ``MMFUSE_FAULT=<point>[@<epoch>]`` (test-only, see :func:`fault`) ends the process with
``os._exit`` at a named step of the commit, as a kill there would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn

from mmfuse._writable import UnwritableError, is_temporary, raise_injected
from mmfuse.engine.run_dir import RunDir
from mmfuse.model.checkpoint import (
    CHECKPOINT_FIX,
    META,
    STATE,
    CheckpointError,
    CheckpointWriteError,
    check_matches,
    load_weights,
    read_meta,
    recover_checkpoint,
    replace_folder,
    resolve_checkpoint,
    save_checkpoint,
    staging,
    update_meta,
)

__all__ = [
    "FAULT_ENV",
    "FAULT_EXIT",
    "CheckpointError",
    "CheckpointWriteError",
    "Committed",
    "check_matches",
    "commit_epoch",
    "committed",
    "copy_checkpoint",
    "fault",
    "load_training_state",
    "load_weights",
    "read_meta",
    "recover_run",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "update_run_meta",
    "write_summary",
]

FAULT_ENV = "MMFUSE_FAULT"
"""Test-only: the environment variable that names a step of the epoch commit where the process ends (:func:`fault`)."""
FAULT_EXIT = 86
"""The exit status of a process ended by :func:`fault`."""


def fault(point: str, epoch: int) -> None:
    """Test-only fault injection: ends the process at once (``os._exit``, no cleanup, as ``kill -9`` would) when
    ``MMFUSE_FAULT`` names this step of the commit, ``<point>`` or ``<point>@<epoch>``.

    Points: ``last:<step>`` and ``best:<step>`` with the steps ``weights`` (one file of the tmp folder written),
    ``written`` (the tmp folder whole), ``moved`` (the old folder moved aside), ``replaced`` (the new folder in
    place, the old one not yet deleted); ``metrics:written`` and ``summary:written`` (the tmp file whole, not yet
    renamed). Users never set it.
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    name, _, at = wanted.partition("@")
    if name == point and (not at or int(at) == epoch):
        os._exit(FAULT_EXIT)


def _hook(prefix: str, epoch: int):
    return lambda step: fault(f"{prefix}:{step}", epoch)


def _fix(run: RunDir) -> str:
    """What a failed write of the epoch commit says to do: make room or write elsewhere, then resume."""
    return (
        f"{CHECKPOINT_FIX}; the last whole checkpoint is kept: then continue the run with "
        f"`mmfuse train --resume {run.path}`"
    )


def commit_epoch(
    run: RunDir,
    model: nn.Module,
    meta: dict[str, Any],
    training_state: dict[str, Any],
    history: list[dict[str, Any]],
    improved: bool,
) -> None:
    """Writes epoch ``history[-1]``: the last checkpoint (with ``history`` in its training state), the best one when
    ``improved``, and ``metrics.jsonl`` (the order and every crash state: the module docstring).

    Raises:
        CheckpointWriteError: a file could not be written (full disk, read-only or unwritable folder); the run
            folder holds the last committed epoch (or this one, when only a later step failed).
    """
    epoch = int(history[-1]["epoch"])
    state = {**training_state, "history": json.dumps(history, default=float)}
    try:
        save_checkpoint(run.last, model, meta, state, on_step=_hook("last", epoch))
        if improved:
            copy_checkpoint(run.last, run.best, on_step=_hook("best", epoch))
        run.rewrite_metrics(history, on_step=_hook("metrics", epoch))
    except (UnwritableError, OSError) as e:  # a CheckpointWriteError, or metrics.jsonl's UnwritableError
        raise CheckpointWriteError.of(e, run.metrics, what="run file", fix=_fix(run)) from None


def write_summary(run: RunDir, summary: dict[str, Any], epoch: int) -> None:
    """Writes ``summary.json`` whole (``summary.json.tmp``, then renamed; fault point ``summary:written``).

    Raises:
        CheckpointWriteError: it could not be written (full disk, read-only or unwritable folder).
    """
    try:
        run.write_summary(summary, on_step=_hook("summary", epoch))
    except (UnwritableError, OSError) as e:
        raise CheckpointWriteError.of(e, run.summary, what="run file", fix=_fix(run)) from None


def update_run_meta(run: RunDir, folder: Path, changes: dict[str, Any]) -> None:
    """:func:`~mmfuse.model.checkpoint.update_meta` of a checkpoint of ``run`` (the calibration after training).

    Raises:
        CheckpointWriteError: ``meta.json`` could not be written; it is as it was, and the message says to resume
            the run once the disk has room (the resume calibrates again).
    """
    try:
        update_meta(folder, changes)
    except CheckpointWriteError as e:
        raise CheckpointWriteError.of(e, folder, fix=_fix(run)) from None


def copy_checkpoint(source: Path, folder: Path, *, on_step=None) -> Path:
    """``folder`` replaced by a copy of the checkpoint ``source`` without its training state (the best checkpoint
    from the last one), the crash-safe way of :func:`~mmfuse.model.checkpoint.save_checkpoint`.

    Raises:
        CheckpointWriteError: a file could not be written (the tmp copy is removed).
    """
    tmp = staging(folder)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = sorted(p for p in source.iterdir() if p.is_file() and p.name != STATE and not is_temporary(p))
        for i, path in enumerate(files):  # a stray temporary file (a meta.json update cut short) is not copied
            raise_injected(tmp / path.name)
            with path.open("rb") as src, (tmp / path.name).open("wb") as dst:  # streamed: weights can be large
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())  # as write_synced does: renamed into place only once on the disk
            if i == 0 and on_step is not None:
                on_step("weights")
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError.of(e, tmp) from None
    replace_folder(tmp, folder, on_step=on_step)
    return folder


@dataclass
class Committed:
    """What a run folder holds after its last committed epoch (:func:`committed`).

    Attributes:
        state: the last checkpoint's training state (optimizer, scheduler, RNG, ``loop`` counters).
        history: the epoch records up to that epoch.
        actions: what :func:`recover_run` did to get there, in words (empty when nothing was interrupted).
    """

    state: dict[str, Any]
    history: list[dict[str, Any]]
    actions: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return int(self.state["loop"]["epoch"])


def recover_run(run: RunDir) -> list[str]:
    """Turns what an interrupted epoch commit left in ``run`` into the state after its last committed epoch (the
    table in the module docstring); run it on the main process only, before :func:`committed`.

    Returns:
        What was done, in words (for the console and the log).

    Raises:
        CheckpointError: the folder holds epochs but no last checkpoint, or a best checkpoint of another epoch than
            the last checkpoint records (not a state a crash leaves: the folder was changed by hand).
    """
    actions = [a for a in (recover_checkpoint(run.last), recover_checkpoint(run.best)) if a]
    for path in (staging(run.metrics), staging(run.summary)):
        if path.exists():
            path.unlink()
            actions.append(f"removed {path.name}, an unfinished write")
    if not (run.last / META).is_file():
        lines = _lines(run.metrics)
        if run.last.exists() or (run.best / META).is_file() or lines:
            raise CheckpointError(
                f"cannot resume {str(run.path)!r}: it has no last checkpoint ({run.last / META} not found) but "
                f"{'a best checkpoint' if (run.best / META).is_file() else f'{len(lines)} lines in metrics.jsonl'}; "
                "it was changed by hand. Start a new run (or restore checkpoints/last)"
            )
        return actions
    found = committed(run)
    loop = found.state["loop"]
    best_epoch = loop.get("best_epoch")
    best_meta = read_meta(run.best) if (run.best / META).is_file() else None
    if best_epoch is not None and (best_meta is None or best_meta.get("epoch") != best_epoch):
        if best_epoch != found.epoch:
            had = "none" if best_meta is None else f"epoch {best_meta.get('epoch')}"
            raise CheckpointError(
                f"cannot resume {str(run.path)!r}: its best checkpoint is {had}, but the last checkpoint records "
                f"epoch {best_epoch} as the best; it was changed by hand. Start a new run"
            )
        copy_checkpoint(run.last, run.best)
        actions.append(f"rebuilt checkpoints/best from checkpoints/last (epoch {best_epoch}, the best epoch)")
    text = "".join(json.dumps(r, default=float) + "\n" for r in found.history)
    current = run.metrics.read_text(encoding="utf-8") if run.metrics.is_file() else None
    if current != text:
        run.rewrite_metrics(found.history)
        actions.append(
            f"rewrote metrics.jsonl from the last checkpoint's records ({len(found.history)} epochs; the file had "
            f"{0 if current is None else len(current.splitlines())})"
        )
    return actions


def committed(run: RunDir) -> Committed | None:
    """The last committed epoch of ``run`` (its training state and epoch records), ``None`` when no epoch was
    committed (no last checkpoint). Reads only; call :func:`recover_run` first after a crash.

    Raises:
        FileNotFoundError: the last checkpoint has no training state (it cannot resume).
    """
    if not (run.last / META).is_file():
        return None
    state = load_training_state(run.last)
    epoch = int(state["loop"]["epoch"])
    if "history" in state:
        history = json.loads(state.pop("history"))
    else:  # written by an older mmfuse: the records are only in metrics.jsonl
        history = [r for r in run.history() if r["epoch"] <= epoch]
    return Committed(state, history)


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.is_file() else []


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """Reads ``training_state.pt`` with ``weights_only=True``.

    Raises:
        FileNotFoundError: the checkpoint has no training state (not a resumable checkpoint).
    """
    path = Path(folder) / STATE
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: this checkpoint cannot resume training")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (weights-only loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` saved."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
