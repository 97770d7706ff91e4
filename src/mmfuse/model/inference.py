"""Running a model over a data loader: logits and labels (gathered across processes), and optional details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmfuse.features import InputMaker
from mmfuse.fusion.base import encode_image, encode_text
from mmfuse.model.build import set_train_mode
from mmfuse.model.prediction import probabilities


@dataclass
class Outputs:
    """What a pass over a dataset gives, in dataset order.

    Attributes:
        logits: ``(N, C)``.
        labels: ``(N,)`` class ids, ``-1`` for unlabeled examples.
        ids: example ids (single-process runs only; empty otherwise).
        attention: per example, its ``(Q, N)`` attention map with text padding rows removed (heads that have one).
        image_reliance: ``(N,)`` (heads that have it).
        image_present: ``(N,)`` bool, ``False`` where the model got a blank for a missing or unreadable image
            (single-process runs only; ``None`` otherwise).
        grid: ``(h, w)`` of the image grid the N regions of ``attention`` lie on, as the image encoder reported it
            (``FusionOutput.grid``); ``None`` without attention or when the encoder does not say.
        temperature: the model's calibration temperature (:attr:`proba` is ``softmax(logits / temperature)``);
            ``None``: not calibrated. ``logits`` are always the model's own.
    """

    logits: np.ndarray
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)
    attention: list[np.ndarray] | None = None
    image_reliance: np.ndarray | None = None
    image_present: np.ndarray | None = None
    grid: tuple[int, int] | None = None
    temperature: float | None = None

    @property
    def proba(self) -> np.ndarray:
        """``(N, C)`` class probabilities, calibrated by :attr:`temperature` when it is set."""
        return probabilities(self.logits, self.temperature)

    @property
    def uncalibrated_proba(self) -> np.ndarray:
        """``(N, C)`` ``softmax(logits)``, the probabilities before calibration."""
        return probabilities(self.logits)


@torch.inference_mode()
def run_model(
    model: nn.Module,
    loader: DataLoader,
    make_inputs: InputMaker,
    *,
    device: torch.device | str,
    accelerator: Any = None,
    details: bool = False,
    bar: Any = None,
) -> Outputs:
    """Runs ``model`` in eval mode over ``loader``.

    Args:
        model: the (maybe accelerate-prepared) model.
        loader: the (maybe prepared) loader, in dataset order.
        make_inputs: turns a batch into model inputs.
        device: where inputs go.
        accelerator: when given, logits and labels are gathered across processes with ``gather_for_metrics``
            (which drops the samples repeated to even out the last batch).
        details: also collect attention maps and image reliance (single process).
        bar: a progress bar (:class:`~mmfuse.progress.Progress`) to advance by each batch's examples (across
            processes).
    """
    set_train_mode(model, False)
    logits, labels, ids, attention, reliance, present = [], [], [], [], [], []
    grid: tuple[int, int] | None = None
    for batch in loader:
        inputs = make_inputs(batch, device)
        out = model(inputs)
        batch_logits, batch_labels = out.logits.float(), batch["labels"].to(out.logits.device)
        if accelerator is not None:
            batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch_labels))
        else:
            ids.extend(batch["ids"])
            n = len(batch["ids"])
            shown = inputs.image_present
            present.append(torch.ones(n, dtype=torch.bool) if shown is None else shown.bool().cpu().reshape(n))
        logits.append(batch_logits.cpu())
        labels.append(batch_labels.cpu())
        if details:
            attention.extend(_attention_rows(out.attention, inputs))
            grid = grid or getattr(out, "grid", None)  # one image preprocessing: one grid for every batch
            if out.image_reliance is not None:
                reliance.append(out.image_reliance.float().cpu())
        if bar is not None:
            bar.update(len(batch_logits))
    return Outputs(
        logits=torch.cat(logits).numpy() if logits else np.zeros((0, 0)),
        labels=torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
        ids=ids,
        attention=attention if details and attention else None,
        image_reliance=torch.cat(reliance).numpy() if reliance else None,
        image_present=torch.cat(present).numpy() if present else None,
        grid=grid if details and attention else None,
    )


EMBEDDINGS = ("fused", "text", "image")
"""What :func:`run_embeddings` extracts: the ``fused`` embedding the head's last classifier layer reads, or the
pooled output of the ``text`` / ``image`` encoder."""


@torch.inference_mode()
def run_embeddings(
    model: nn.Module, loader: DataLoader, make_inputs: InputMaker, *, kind: str, device: torch.device | str,
    bar: Any = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:  # fmt: skip
    """Runs ``model`` in eval mode over ``loader`` (single process) and returns ``(embeddings (N, D), ids,
    image_present (N,))`` in dataset order.

    ``kind``: ``fused`` runs the head (its :attr:`~mmfuse.fusion.FusionOutput.embedding`); ``text`` / ``image`` run
    only that encoder, or read its precomputed features when the batches carry them (a frozen encoder), pooled. An
    image missing or unreadable gives zeros, as the head sees it (:func:`~mmfuse.fusion.encode_image`).
    """
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding kind {kind!r}; use one of {', '.join(EMBEDDINGS)}")
    set_train_mode(model, False)
    rows, ids, present = [], [], []
    for batch in loader:
        inputs = make_inputs(batch, device)
        if kind == "fused":
            out = model(inputs).embedding
            if out is None:
                raise ValueError(
                    f"the {type(model).__name__} head returns no embedding (FusionOutput.embedding); compute its "
                    "logits with mmfuse.fusion.classify to have one"
                )
        elif kind == "text":
            out = encode_text(model.text_encoder, inputs).pooled
        else:
            out = encode_image(model.image_encoder, inputs).pooled
        rows.append(out.float().cpu())
        ids.extend(batch["ids"])
        n = len(batch["ids"])
        shown = inputs.image_present
        present.append(torch.ones(n, dtype=torch.bool) if shown is None else shown.bool().cpu().reshape(n))
        if bar is not None:
            bar.update(n)
    embeddings = torch.cat(rows).numpy() if rows else np.zeros((0, 0), dtype=np.float32)
    return embeddings, ids, torch.cat(present).numpy() if present else np.zeros(0, dtype=bool)


def _attention_rows(attention: torch.Tensor | None, inputs: Any) -> list[np.ndarray]:
    """Each example's ``(Q, N)`` attention, without the rows of text padding when Q is the text length."""
    if attention is None:
        return []
    att = attention.float().cpu()
    mask = None
    if inputs.text_inputs is not None and "attention_mask" in inputs.text_inputs:
        mask = inputs.text_inputs["attention_mask"].bool().cpu()
    elif inputs.text_features is not None and inputs.text_features.mask is not None:
        mask = inputs.text_features.mask.cpu()
    rows = []
    for i in range(att.shape[0]):
        a = att[i]
        if mask is not None and mask.shape[1] == a.shape[0]:
            a = a[mask[i]]
        rows.append(a.numpy())
    return rows
