"""Checkpoints: trainable weights in safetensors, metadata in JSON, training state loadable with weights_only.

A checkpoint folder holds:

- ``model.safetensors``: every weight of the model except those of fully frozen encoders, which are unchanged
  pretrained weights (often 100 MB): they are rebuilt from their names at load time, and their identity
  fingerprint is checked against the one recorded here.
- ``meta.json``: format version, the resolved config, the class names, epoch, metrics, the tuned threshold, the
  training-label counts (for baselines) and the encoders' identities.
- ``training_state.pt`` (checkpoints that can resume a run): optimizer, scheduler, RNG states and loop counters,
  only tensors and plain Python values, loaded with ``torch.load(weights_only=True)``: nothing is unpickled.

Folders are written to a temporary sibling and renamed into place, so an interrupted save leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmfuse.engine.build import encoder_records

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "meta.json"
STATE = "training_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not match the model or config it is loaded into."""


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries a checkpoint stores: all but those of fully frozen encoders (copied to CPU)."""
    skip = [prefix for prefix, enc in _encoders(model) if enc.is_frozen]
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in skip)
    }


def _encoders(model: nn.Module) -> list[tuple[str, Any]]:
    from mmfuse.features import encoders_of

    return list(encoders_of(model).values())


def save_checkpoint(
    folder: str | Path, model: nn.Module, meta: dict[str, Any], training_state: dict[str, Any] | None = None
) -> Path:
    """Writes a checkpoint folder (replacing one that exists) and returns its path.

    ``meta`` gets the format version and the encoder records added.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(stored_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
    full_meta = {"format_version": FORMAT_VERSION, **meta, "encoders": encoder_records(model)}
    (tmp / META).write_text(json.dumps(full_meta, indent=2, default=str) + "\n", encoding="utf-8")
    if training_state is not None:
        torch.save(training_state, tmp / STATE)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """The checkpoint folder of ``path``: a checkpoint folder itself, or a run folder (its ``checkpoints/<which>``).

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    path = Path(path)
    if (path / META).is_file():
        return path
    candidate = path / "checkpoints" / which
    if (candidate / META).is_file():
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} not found; pass a run folder (runs/<name>) or a checkpoint folder")
    raise FileNotFoundError(
        f"no checkpoint in {str(path)!r}: expected {META} there or in checkpoints/{which}/ "
        "(a run writes its first checkpoint after its first epoch)"
    )


def read_meta(folder: str | Path) -> dict[str, Any]:
    """Reads ``meta.json`` of a checkpoint folder.

    Raises:
        FileNotFoundError: no ``meta.json``.
        CheckpointError: not JSON, or written by a newer format.
    """
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint metadata {str(path)!r} not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint metadata {str(path)!r} is not valid JSON ({e})") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} has format version {version!r}; this mmfuse reads up to {FORMAT_VERSION}: "
            "upgrade mmfuse"
        )
    return meta


def check_matches(meta: dict[str, Any], *, head: str, classes: list[str], folder: str | Path) -> None:
    """Refuses a checkpoint of another head or other classes than the config and label map it is loaded for.

    Raises:
        CheckpointError: naming what differs.
    """
    saved_head = meta.get("config", {}).get("model", {}).get("head", {}).get("name")
    if saved_head != head:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is of fusion head {saved_head!r}, but the config asks for {head!r}; "
            "set model.head.name to match, or start a new run"
        )
    if meta.get("classes") != classes:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} was trained on classes {meta.get('classes')}, but the data has {classes}; "
            "use the data it was trained on, or start a new run"
        )


def load_weights(model: nn.Module, folder: str | Path, meta: dict[str, Any]) -> None:
    """Loads stored weights into ``model`` (built from the checkpoint's config) and checks the rebuilt frozen
    encoders against the recorded fingerprints.

    Raises:
        CheckpointError: a weight missing or unexpected (another architecture or head params), a shape mismatch,
            or a frozen encoder whose fingerprint changed (other weights or preprocessing than at training).
    """
    folder = Path(folder)
    _check_encoders(model, meta, folder)
    path = folder / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights {str(path)!r} not found")
    weights = load_file(str(path))
    expected = set(stored_state(model))
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            f" ({len(missing)} / {len(unexpected)} in all); was it trained with other head params or encoders?"
        )
    current = model.state_dict()
    reshaped = [
        f"{k}: {list(v.shape)} here, {list(current[k].shape)} in the model"
        for k, v in weights.items()
        if v.shape != current[k].shape
    ]
    if reshaped:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} does not fit this model: {len(reshaped)} weights have other shapes "
            f"({'; '.join(reshaped[:3])}); was it trained with other head params (model.head.params) or encoders?"
        )
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(folder)!r} does not fit this model: {e}") from None


def _check_encoders(model: nn.Module, meta: dict[str, Any], folder: Path) -> None:
    saved = meta.get("encoders", {})
    for modality, record in encoder_records(model).items():
        old = saved.get(modality)
        if old is None:
            raise CheckpointError(f"checkpoint {str(folder)!r} has no {modality} encoder, but the model has one")
        if record["frozen"] and old.get("frozen") and record["fingerprint"] != old.get("fingerprint"):
            raise CheckpointError(
                f"the {modality} encoder {record['name']!r} rebuilt for checkpoint {str(folder)!r} differs from the "
                f"one it was trained with (fingerprint {record['fingerprint']} != {old.get('fingerprint')}): its "
                "weights or preprocessing changed. Install the encoder version used in training, or retrain"
            )


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
