"""Saved models: trainable weights in safetensors and a self-describing ``meta.json``; loading one needs no trainer.

A checkpoint folder holds:

- ``model.safetensors``: every weight of the model except those of fully frozen encoders, which are unchanged
  pretrained weights (often 100 MB): they are rebuilt from their names at load time, and their identity
  fingerprint is checked against the one recorded here. Of a LoRA encoder only the adapters are stored; its base
  is rebuilt the same way and checked against the hash of the base weights it was trained on.
- ``meta.json``: format version and the :class:`~mmfuse.model.spec.ModelSpec` (encoders and head, class names,
  tuned threshold, calibration temperature, training-label counts, the encoders' identities: preprocessing,
  tokenizer, weights), plus what the trainer adds (epoch, step, validation metrics, the calibration fit, mmfuse
  version).
- ``training_state.pt`` (checkpoints that can resume a run): written and read by
  :mod:`mmfuse.engine.checkpoint`.

:func:`load_model` turns a folder into a model in eval mode and its spec. Format 1 (the whole training config in
``meta.json`` under ``config``) is still read.

Saving is crash-safe: :func:`save_checkpoint` writes every file into the sibling ``<folder>.tmp`` (each flushed to
disk by :func:`~mmfuse._writable.write_synced`), then moves the old folder aside to ``<folder>.old``, renames
``<folder>.tmp`` to ``<folder>`` and deletes ``<folder>.old``. Whenever the process dies, :func:`recover_checkpoint`
turns what is left into exactly one whole checkpoint, the old or the new one (the table is in its docstring).
:func:`update_meta` rewrites ``meta.json`` alone through :func:`~mmfuse._writable.write_atomic`. A write that fails
(a full disk, a read-only or unwritable folder) raises :class:`CheckpointWriteError` (an
:class:`~mmfuse._writable.UnwritableError`) and leaves only the previous checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mmfuse._writable import (
    UnwritableError,
    fsync_path,
    raise_injected,
    unwritable,
    write_atomic,
    write_synced,
)
from mmfuse.config import ConfigError
from mmfuse.features import encoders_of
from mmfuse.model.build import build_model, encoder_records, set_train_mode
from mmfuse.model.spec import ModelSpec

FORMAT_VERSION = 2
"""2: ``meta.json`` holds the model spec (``model``, ``classes``, ...); 1: the whole training config (``config``)."""
WEIGHTS = "model.safetensors"
META = "meta.json"
STATE = "training_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not match the model or config it is loaded into."""


CHECKPOINT_FIX = "write the run elsewhere: set run.out_dir to a writable folder (run.out_dir=PATH on the command line)"
"""How to write a checkpoint elsewhere, as a failed checkpoint write says it."""


class CheckpointWriteError(UnwritableError, CheckpointError):
    """A checkpoint (or another file of a training run's epoch commit) could not be written: a full disk, a read-only
    filesystem, a folder without write permission. What was half written is removed (or, where even that fails,
    ignored by :func:`recover_checkpoint`); the previous checkpoint is kept whole.

    The :class:`~mmfuse._writable.UnwritableError` of checkpoints (one message: path, reason, fix; the CLI ends
    with it, exit status 2), and a :class:`CheckpointError` for callers that catch those.

    Attributes:
        path: the file or folder that could not be written.
        reason: the system's words for it (``No space left on device``).
        errno: the error number (``errno.ENOSPC``), ``None`` when unknown.
    """

    def __init__(
        self,
        path: str | Path,
        reason: str,
        code: int | None = None,
        *,
        what: str = "checkpoint",
        fix: str = CHECKPOINT_FIX,
    ) -> None:
        super().__init__(path, reason, code, what=what, fix=fix)

    @classmethod
    def of(
        cls, error: BaseException, path: str | Path, *, what: str = "checkpoint", fix: str = CHECKPOINT_FIX
    ) -> CheckpointWriteError:
        """The error for ``error`` (an ``OSError``, safetensors' ``SafetensorError``, or an
        :class:`~mmfuse._writable.UnwritableError`) raised while writing ``path`` (the error's own path wins when it
        has one)."""
        if isinstance(error, UnwritableError):
            return cls(error.path, error.reason, error.errno, what=error.what, fix=fix)
        return unwritable(error, path, what=what, fix=fix, kind=cls)  # type: ignore[return-value]


def stored_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries a checkpoint stores: all but those of fully frozen encoders, and of a LoRA encoder
    only its adapters (copied to CPU)."""
    from mmfuse.encoders.lora import is_adapter_key, lora_settings

    encoders = encoders_of(model).values()
    skip = [prefix for prefix, enc in encoders if enc.is_frozen]
    adapters_only = [prefix for prefix, enc in encoders if lora_settings(enc) is not None]
    return {
        k: v.detach().cpu().contiguous().clone()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in skip)
        and not any(k.startswith(p) and not is_adapter_key(k[len(p) :]) for p in adapters_only)
    }


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
    *,
    on_step: Callable[[str], None] | None = None,
) -> Path:
    """Writes a checkpoint folder (replacing one that exists) and returns its path.

    The files go to ``<folder>.tmp`` first; :func:`replace_folder` puts it in place (see the module docstring).

    Args:
        folder: the checkpoint folder.
        model: the model (its stored state: see :func:`stored_state`).
        meta: :meth:`ModelSpec.to_meta` and whatever else to record (epoch, metrics); the format version and the
            encoder records are added.
        training_state: what resuming needs (see :mod:`mmfuse.engine.checkpoint`), or ``None``.
        on_step: called with the name of each step done (``weights``, then those of :func:`replace_folder`): the
            trainer's fault-injection hook for crash tests.

    Raises:
        CheckpointWriteError: a file could not be written (full disk, read-only or unwritable folder); nothing
            half written is left, and ``folder`` is still the previous checkpoint.
    """
    folder = Path(folder)
    tmp = staging(folder)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        raise_injected(tmp / WEIGHTS)
        save_file(stored_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        fsync_path(tmp / WEIGHTS)
        if on_step is not None:
            on_step("weights")
        full_meta = {"format_version": FORMAT_VERSION, **meta, "encoders": encoder_records(model)}
        write_synced(tmp / META, (json.dumps(full_meta, indent=2, default=str) + "\n").encode("utf-8"))
        if training_state is not None:
            buffer = io.BytesIO()  # serialized in memory: a failed write is then a plain OSError with its errno
            torch.save(training_state, buffer)
            write_synced(tmp / STATE, buffer.getvalue())
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError.of(e, tmp) from None
    replace_folder(tmp, folder, on_step=on_step)
    return folder


def staging(folder: str | Path) -> Path:
    """Where a new version of ``folder`` is written before it replaces ``folder``: ``<folder>.tmp``."""
    folder = Path(folder)
    return folder.with_name(folder.name + ".tmp")


def _old(folder: Path) -> Path:
    return folder.with_name(folder.name + ".old")


def replace_folder(tmp: Path, folder: Path, *, on_step: Callable[[str], None] | None = None) -> None:
    """Puts the whole folder ``tmp`` in the place of ``folder``: ``folder`` -> ``folder.old``, ``tmp`` ->
    ``folder``, delete ``folder.old``. Each rename is atomic; :func:`recover_checkpoint` finishes or undoes the
    sequence after a crash. ``on_step`` is called with ``written``, ``moved``, ``replaced`` after each step.

    Raises:
        CheckpointWriteError: a rename failed (``tmp`` is removed, ``folder`` is the previous one).
    """
    old = _old(folder)
    step = on_step or (lambda _: None)
    fsync_path(tmp)
    step("written")
    try:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError.of(e, folder) from None
    step("moved")
    try:
        os.replace(tmp, folder)
    except OSError as e:
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # put the previous one back
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError.of(e, folder) from None
    fsync_path(folder.parent)
    step("replaced")
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(folder: str | Path) -> str | None:
    """Turns what an interrupted :func:`save_checkpoint` (or :func:`replace_folder`) left into one whole folder.

    Every state a crash can leave, and what becomes of it (``F`` the folder; the steps are: write ``F.tmp``, move
    ``F`` to ``F.old``, rename ``F.tmp`` to ``F``, delete ``F.old``):

    ====  ==========  ============  ==========  ===========================================  ============

    F     F.tmp       F.old         killed      meaning                                      recovery
    ====  ==========  ============  ==========  ===========================================  ===================
    yes   no          no            --          nothing was interrupted                      nothing to do
    yes   partial     no            writing     the new files are not all written            delete F.tmp (old)
    yes   whole       no            renaming    written, the old one not yet moved           delete F.tmp (old)
    yes   any         partial/whole cleaning    a stale F.old being deleted before a save    delete both (old)
    no    whole       whole         renaming    between the two renames                      F.tmp -> F (new)
    yes   no          whole         cleaning    renamed, F.old not yet deleted               delete F.old (new)
    no    no          whole         --          (not left by a save) F.old alone             F.old -> F (old)
    no    partial     no            writing     the first save of F, unfinished              delete F.tmp (none)
    ====  ==========  ============  ==========  ===========================================  ===================

    ``F.old`` exists only once ``F.tmp`` is whole (it is moved aside after the last write), so ``F.tmp`` beside
    ``F.old`` is always a whole checkpoint. Each recovery step is itself a rename or a deletion, so a crash during
    recovery leaves one of the states above.

    Returns:
        What was done, in words (for the log), or ``None`` when there was nothing to do.
    """
    folder = Path(folder)
    tmp, old = staging(folder), _old(folder)
    if folder.exists():
        left = [p for p in (tmp, old) if p.exists()]
        for path in left:
            shutil.rmtree(path)
        if not left:
            return None
        return f"removed {', '.join(p.name for p in left)} left by an interrupted save; {folder.name} is whole"
    if old.exists():
        if tmp.exists():
            os.replace(tmp, folder)
            shutil.rmtree(old)
            return f"finished an interrupted save of {folder.name} (the new version was whole in {tmp.name})"
        os.replace(old, folder)
        return f"restored {folder.name} from {old.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
        return f"removed {tmp.name}, an unfinished first save of {folder.name}"
    return None


def update_meta(folder: str | Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Sets ``changes`` in a checkpoint's ``meta.json`` (through :func:`~mmfuse._writable.write_atomic`: an
    interruption leaves the old one whole) and returns the new metadata; the weights are not touched.

    Raises:
        CheckpointWriteError: ``meta.json`` could not be written (full disk, read-only or unwritable folder); it is
            as it was.
    """
    folder = Path(folder)
    meta = {**read_meta(folder), **changes}
    text = json.dumps(meta, indent=2, default=str) + "\n"
    write_atomic(folder / META, text, what="checkpoint metadata", fix=CHECKPOINT_FIX, kind=CheckpointWriteError)
    return meta


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
    saved_head = ModelSpec.from_meta(meta, source=f"checkpoint {str(folder)!r}").head
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
    """Loads stored weights into ``model`` (built from the checkpoint's spec) and checks the rebuilt frozen
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
    weights = _without_legacy_aliases(model, load_file(str(path)))
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


def _without_legacy_aliases(model: nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` with the entries of an encoder's old state-dict names (``legacy_state_aliases``: a checkpoint
    saved when the encoder registered some modules twice) under today's names: an old copy of a weight that is also
    stored under its current name is dropped, one that is not is renamed."""
    weights = dict(weights)
    for prefix, encoder in encoders_of(model).values():
        aliases = getattr(encoder, "legacy_state_aliases", None)
        for old, new in (aliases() if aliases is not None else {}).items():
            for key in [k for k in weights if k.startswith(prefix + old)]:
                current = prefix + new + key[len(prefix + old) :]
                value = weights.pop(key)
                weights.setdefault(current, value)
    return weights


def _check_encoders(model: nn.Module, meta: dict[str, Any], folder: Path) -> None:
    from mmfuse.encoders.lora import base_weights_hash

    saved = meta.get("encoders", {})
    encoders = encoders_of(model)
    for modality, record in encoder_records(model).items():
        old = saved.get(modality)
        if old is None:
            raise CheckpointError(f"checkpoint {str(folder)!r} has no {modality} encoder, but the model has one")
        if (
            "base_weights" in record
            and record["base_weights"] != old.get("base_weights")
            and base_weights_hash(encoders[modality][1], legacy=True) != old.get("base_weights")
        ):  # the hash of a checkpoint saved with the encoder's old state-dict names is of those names
            raise CheckpointError(
                f"the base weights of the LoRA {modality} encoder {record['name']!r} rebuilt for checkpoint "
                f"{str(folder)!r} differ from those its adapters were trained on: the encoder's weights changed. "
                "Install the encoder version used in training, or retrain"
            )
        if record["frozen"] and old.get("frozen") and record["fingerprint"] != old.get("fingerprint"):
            raise CheckpointError(
                f"the {modality} encoder {record['name']!r} rebuilt for checkpoint {str(folder)!r} differs from the "
                f"one it was trained with (fingerprint {record['fingerprint']} != {old.get('fingerprint')}): its "
                "weights or preprocessing changed. Install the encoder version used in training, or retrain"
            )


def load_model(
    path: str | Path, *, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelSpec, Path]:
    """A saved model, rebuilt from its spec, with its weights, in eval mode on ``device``.

    Frozen encoders are rebuilt from their names and checked against the fingerprints recorded at training.

    Args:
        path: a run folder (its ``checkpoints/<checkpoint>``) or a checkpoint folder.
        checkpoint: ``best`` or ``last`` for a run folder.
        device: where the model goes.

    Returns:
        The model, its spec and the checkpoint folder.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: a damaged checkpoint, or rebuilt encoders that differ from the trained ones.
    """
    folder = resolve_checkpoint(path, checkpoint)
    meta = read_meta(folder)
    try:
        spec = ModelSpec.from_meta(meta, source=f"checkpoint {str(folder)!r}")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    model = build_model(spec.model, len(spec.classes), spec.classes)
    load_weights(model, folder, meta)
    set_train_mode(model, False)
    return model.to(torch.device(device)), spec, folder


def run_config_data(folder: Path, meta: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """The training config a checkpoint was made with, as a mapping whose ``model`` is the spec's: format 1 stored
    it in ``meta.json``; format 2 leaves it in ``config.yaml`` beside the checkpoint (``save``) or in its run
    folder; without either, only ``model`` (every other section takes its defaults)."""
    if isinstance(meta.get("config"), dict):
        data = dict(meta["config"])
    else:
        from mmfuse.config import read_yaml

        candidates = [folder / "config.yaml"]
        if folder.parent.name == "checkpoints":
            candidates.append(folder.parent.parent / "config.yaml")
        found = next((p for p in candidates if p.is_file()), None)
        data = read_yaml(found) if found is not None else {}
    data["model"] = spec.model.model_dump(mode="json")
    return data
