"""Checkpoints of a training run: the saved model (:mod:`mmfuse.model.checkpoint`) plus what resuming needs.

``training_state.pt`` (checkpoints that can resume a run) holds the optimizer, scheduler, RNG states and loop
counters, only tensors and plain Python values, loaded with ``torch.load(weights_only=True)``: nothing is unpickled.
The model part (weights, ``meta.json``, loading) is :mod:`mmfuse.model.checkpoint`, imported here for the trainer.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfuse.model.checkpoint import (
    STATE,
    CheckpointError,
    check_matches,
    load_weights,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CheckpointError",
    "check_matches",
    "load_training_state",
    "load_weights",
    "read_meta",
    "resolve_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


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
