"""Pieces every built-in encoder shares: loading errors, weight fingerprints, freezing, JSON-able settings."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


class EncoderLoadError(ValueError):
    """A model that could not be loaded: a hub name with no internet, or a folder without a usable model.

    The message says what to do (connect, or pass a local folder made with ``save_pretrained``).
    """


def is_local(source: str | Path) -> bool:
    """True when ``source`` names an existing local folder."""
    return Path(source).expanduser().is_dir()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _hub_offline() -> bool:
    try:
        from huggingface_hub.constants import is_offline_mode
    except ImportError:  # older huggingface_hub
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    return bool(is_offline_mode())


_HUB_PROBES: dict[str, str | None] = {}  # hub endpoint -> None when it answered, else why it could not be reached


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached, or ``None`` when it answers.

    One HEAD request to the endpoint, with the hub client's own session (proxies, certificates) and metadata timeout
    (``HF_HUB_ETAG_TIMEOUT``), once per process: without it, every file a model needs would be tried with the hub
    client's retries and back-off (about 30-70 s with no network) before failing.
    """
    from huggingface_hub import constants, get_session

    endpoint = constants.ENDPOINT
    if endpoint not in _HUB_PROBES:
        try:
            get_session().head(endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT, follow_redirects=False)
            _HUB_PROBES[endpoint] = None
        except Exception as exc:  # the client's transport errors: their classes differ between huggingface_hub versions
            _HUB_PROBES[endpoint] = f"cannot reach {endpoint} ({_first_line(exc)})"
    return _HUB_PROBES[endpoint]


def _loads_a_model(loader: Callable[..., Any]) -> bool:
    """Whether ``loader`` is the ``from_pretrained`` of a transformers model class (``AutoModel``, ``BertModel``,
    ...), which take ``adapter_kwargs``; a config, tokenizer or image processor loader does not."""
    owner = getattr(loader, "__self__", None)
    if not isinstance(owner, type):
        return False
    from transformers import PreTrainedModel

    return issubclass(owner, PreTrainedModel) or hasattr(owner, "_model_mapping")  # Auto* model classes


def load_pretrained(loader: Callable[..., T], source: str | Path, what: str, **kwargs: Any) -> T:
    """Calls ``loader(source, **kwargs)`` (a transformers ``from_pretrained``), turning its failures into one
    :class:`EncoderLoadError` that says how to fix them, instead of a long traceback from the hub client.

    A hub name is looked up online only when the hub answers (:func:`hub_unreachable`); otherwise only the local
    Hugging Face cache is read (``local_files_only``), so a model downloaded before still loads, and one that was
    not fails at once with the same message.

    Args:
        loader: e.g. ``AutoModel.from_pretrained``.
        source: hub id or local folder.
        what: what is loaded, for the message (``"text model"``, ``"tokenizer"``, ...).
    """
    from transformers.utils import logging as hf_logging

    local = is_local(source)
    offline = not local and _hub_offline()
    unreachable = None if local or offline else hub_unreachable()
    if unreachable is not None:
        kwargs = {**kwargs, "local_files_only": True}
        if _loads_a_model(loader):
            # transformers' Auto*.from_pretrained looks for a PEFT adapter_config.json on the hub whenever peft is
            # installed, without passing local_files_only on to that lookup: it would try the unreachable hub
            kwargs["adapter_kwargs"] = {**(kwargs.get("adapter_kwargs") or {}), "local_files_only": True}
    bars = hf_logging.is_progress_bar_enabled()
    if bars and local:
        hf_logging.disable_progress_bar()  # a "Loading weights" bar for a local folder read in milliseconds is noise
    try:
        return loader(str(Path(source).expanduser()) if local else str(source), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: weights that do not fit the config
        cause = _first_line(exc)
        if local:
            raise EncoderLoadError(
                f"could not load the {what} from folder {str(source)!r} ({cause}); the folder must hold a model "
                f"saved with save_pretrained (config.json, weights, and the tokenizer or preprocessor_config.json)"
            ) from None
        why = "HF_HUB_OFFLINE is set" if offline else unreachable or "no internet or no such model"
        raise EncoderLoadError(
            f"could not load the {what} {str(source)!r} from the Hugging Face hub ({why}; {cause}). A hub model "
            f"needs the internet once; otherwise, on a connected machine, save it with "
            f"`AutoModel.from_pretrained({str(source)!r}).save_pretrained(DIR)` (and its tokenizer / image "
            f"processor the same way) and pass DIR instead (no local folder named {str(source)!r} exists here)"
        ) from None
    finally:
        if bars and not hf_logging.is_progress_bar_enabled():
            hf_logging.enable_progress_bar()


def check_top_k(trainable_top_k: int, num_layers: int, unit: str) -> None:
    """Raises unless ``0 <= trainable_top_k <= num_layers``."""
    if isinstance(trainable_top_k, bool) or not isinstance(trainable_top_k, int):
        raise ValueError(f"trainable_top_k must be an int, got {trainable_top_k!r}")
    if not 0 <= trainable_top_k <= num_layers:
        raise ValueError(
            f"trainable_top_k must be between 0 (all frozen) and {num_layers} (the number of {unit}), "
            f"got {trainable_top_k}"
        )


def set_trainable(modules: Iterable[nn.Module | None], trainable: bool) -> None:
    """Sets ``requires_grad`` on every parameter of ``modules`` (``None`` entries are skipped)."""
    for module in modules:
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(trainable)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists, enums their values), so identities compare equal after
    a round trip through JSON."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class WeightsFingerprint:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes, buffers included), computed lazily.

    The hash is recomputed only when a tensor changed: every in-place write (an optimiser step,
    ``load_state_dict``, ``p.add_(...)`` under ``no_grad``) bumps the tensor's version counter, and a replaced
    tensor has a new identity, so a cheap key of (name, id, version) per tensor tells whether the cached hash
    still holds. Hashing costs about 0.3 s per 100 MB of weights, once.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._digest: str | None = None

    @staticmethod
    def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
        return sorted(module.state_dict(keep_vars=True).items())

    def __call__(self, module: nn.Module) -> str:
        tensors = self._tensors(module)
        key = tuple((name, id(t), t._version) for name, t in tensors)
        if key != self._key or self._digest is None:
            h = hashlib.sha256()
            for name, t in tensors:
                data = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
                if data.numel():
                    h.update(data.reshape(-1).view(torch.uint8).numpy())  # buffer protocol, no copy
            self._key, self._digest = key, h.hexdigest()
        return self._digest
