"""From examples to batches the model reads: precomputed tables, data loaders, and batch -> FusionInputs.

:func:`compute_tables` gets the features the plan precomputes (from a :class:`~mmfuse.features.table.FeatureSource`).
The DataLoader of :func:`make_loader` yields batches of :func:`~mmfuse.data.collate_examples` (ids, texts, labels,
and pixels only when the model runs its image encoder). :class:`InputMaker` turns one into
:class:`~mmfuse.fusion.FusionInputs`: it tokenizes texts for a text encoder that runs in the model, and looks up
precomputed features of frozen encoders by each example's row index. The order of examples (a sampler) is the
caller's: the engine's :class:`~mmfuse.engine.sampler.EpochSampler` for training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from mmfuse.data.dataset import MultimodalDataset, collate_examples
from mmfuse.data.example import Example
from mmfuse.data.labels import LabelMap
from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.features.plan import MODALITIES, FeaturePlan
from mmfuse.features.table import FeatureSource, FeatureTable
from mmfuse.fusion.base import FusionInputs


@dataclass
class Tables:
    """Precomputed features of one dataset, by modality (``None`` where the model runs the encoder)."""

    text: FeatureTable | None = None
    image: FeatureTable | None = None


def compute_tables(
    model: torch.nn.Module,
    plan: FeaturePlan,
    examples: Sequence[Example],
    source: FeatureSource,
    *,
    device: torch.device | str,
    batch_size: int,
    num_workers: int,
    progress: Any = None,
) -> Tables:
    """Features of the model's frozen encoders for ``examples``, as the plan asks (nothing when it asks none)."""
    tables = Tables()
    for modality in MODALITIES:
        if not plan.precomputes(modality):
            continue
        encoder = getattr(model, f"{modality}_encoder")
        table = source.get(
            encoder,
            examples,
            need_sequence=plan.needs_sequence(modality),
            device=device,
            batch_size=batch_size,
            num_workers=num_workers if modality == "image" else 0,
            progress=progress,
        )
        setattr(tables, modality, table)
    return tables


def make_loader(
    examples: Sequence[Example],
    *,
    label_map: LabelMap | None,
    plan: FeaturePlan,
    image_encoder: ImageEncoder | None,
    batch_size: int,
    num_workers: int = 0,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A loader of collated batches; images are decoded (in workers) only when the model runs its image encoder."""
    preprocess = image_encoder.preprocess if plan.needs_pixels and image_encoder is not None else None
    dataset = MultimodalDataset(examples, label_map=label_map, image_preprocess=preprocess)
    workers = num_workers if preprocess is not None else 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_examples,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),  # worker seeds must not draw from the global RNG
    )


class InputMaker:
    """Turns a collated batch into :class:`FusionInputs` on ``device``.

    Args:
        plan: what the model reads raw and what comes precomputed.
        tables: precomputed features of this batch's dataset (rows = the batch's ``index``).
        text_encoder: the model's text encoder (tokenizes texts when the plan reads text raw).
    """

    def __init__(self, plan: FeaturePlan, tables: Tables, text_encoder: TextEncoder | None) -> None:
        self.plan, self.tables, self.text_encoder = plan, tables, text_encoder

    def __call__(self, batch: dict[str, Any], device: torch.device | str) -> FusionInputs:
        rows = batch["index"].cpu()
        inputs = FusionInputs(image_present=batch["image_present"])
        if self.plan.reads_raw("text"):
            assert self.text_encoder is not None
            inputs.text_inputs = self.text_encoder.tokenize(list(batch["texts"]))
        elif self.plan.precomputes("text"):
            inputs.text_features = self._table("text").batch(rows)
        if self.plan.reads_raw("image"):
            inputs.pixel_values = batch["pixel_values"]
        elif self.plan.precomputes("image"):
            table = self._table("image")
            inputs.image_features = table.batch(rows)
            inputs.image_present = table.present_of(rows)
        return inputs.to(device)

    def _table(self, modality: str) -> FeatureTable:
        table = getattr(self.tables, modality)
        if table is None:
            raise ValueError(
                f"the feature plan precomputes {modality}, but no {modality} table was given; "
                "build the tables with compute_tables(model, plan, examples, source, ...)"
            )
        return table
