"""From examples to batches the model reads: data loaders, a seeded epoch sampler, and batch -> FusionInputs.

The DataLoader yields batches of :func:`~mmfuse.data.collate_examples` (ids, texts, labels, and pixels only when the
model runs its image encoder). :class:`InputMaker` turns one into :class:`~mmfuse.fusion.FusionInputs`: it tokenizes
texts for a text encoder that runs in the model, and looks up precomputed features of frozen encoders by each
example's row index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from mmfuse.data.dataset import MultimodalDataset, collate_examples
from mmfuse.data.example import Example
from mmfuse.data.labels import LabelMap
from mmfuse.encoders.base import ImageEncoder, TextEncoder
from mmfuse.engine.build import FeaturePlan
from mmfuse.engine.features import FeatureSource, FeatureTable
from mmfuse.fusion.base import FusionInputs


class EpochSampler(Sampler[int]):
    """A shuffled order of ``range(n)`` that depends only on ``seed + epoch``.

    Every process of a multi-process run draws the same order (each then takes its part of each batch), and a
    resumed run draws, for epoch ``e``, the order the uninterrupted run drew: the data order never depends on the
    global RNG state. ``set_epoch`` is called by accelerate's data loader (and by the engine).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        rng = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=rng).tolist())

    def __len__(self) -> int:
        return self.n


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
    for modality in ("text", "image"):
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
        if self.plan.text == "raw":
            assert self.text_encoder is not None
            inputs.text_inputs = self.text_encoder.tokenize(list(batch["texts"]))
        elif self.tables.text is not None:
            inputs.text_features = self.tables.text.batch(rows)
        if self.plan.image == "raw":
            inputs.pixel_values = batch["pixel_values"]
        elif self.tables.image is not None:
            inputs.image_features = self.tables.image.batch(rows)
            inputs.image_present = self.tables.image.present_of(rows)
        return inputs.to(device)
