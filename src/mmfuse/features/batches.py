"""From examples to batches the model reads: precomputed tables, data loaders, and batch -> FusionInputs.

:func:`compute_tables` gets the features the plan precomputes (from a :class:`~mmfuse.features.table.FeatureSource`).
The DataLoader of :func:`make_loader` yields batches of :func:`~mmfuse.data.collate_examples` (ids, texts, labels,
and pixels only when the model runs its image encoder). :class:`InputMaker` turns one into
:class:`~mmfuse.fusion.FusionInputs`: it tokenizes texts for a text encoder that runs in the model, and looks up
precomputed features of frozen encoders by each example's row index. The order of examples (a sampler) is the
caller's: the engine's :class:`~mmfuse.engine.sampler.EpochSampler` for training.

Pixels travel from the DataLoader workers as they are decoded and resized, before normalisation, where the image
encoder's preprocessor can split the two (``to_uint8`` / ``from_uint8``, as
:class:`~mmfuse.encoders._preprocess.LitePreprocessor` does; :func:`uint8_stages`): ``uint8`` is a quarter of the
float32 bytes through the workers' shared memory and, on a GPU, of the host-to-device copy. :class:`InputMaker`
normalises them on the batch's device (:func:`finish_uint8`), the one step every consumer of :func:`make_loader`'s
batches goes through (training, validation, predict, evaluate, embeddings). ``(x - 127) / 128`` is exact in float32,
so the encoder gets the same bits as from the float32 preprocessing, blanks (``image_present`` False) zeros as
before. Other preprocessors (transformers image processors: CLIP, ResNet, ViT, ...) send float32 as they always did.
No image augmentation runs in the workers, so nothing else sees the pixels before they are normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def uint8_stages(
    preprocess: Any,
) -> tuple[Callable[[Any], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]] | None:
    """``(to_uint8, from_uint8)`` of an image preprocessor that splits its work into the resized ``uint8`` image
    (run in DataLoader workers) and its normalisation (run where the batch is used), or ``None`` when it does not
    (it then runs whole in the workers and gives float32)."""
    to_uint8, from_uint8 = getattr(preprocess, "to_uint8", None), getattr(preprocess, "from_uint8", None)
    if callable(to_uint8) and callable(from_uint8):
        return to_uint8, from_uint8
    return None


def finish_uint8(
    from_uint8: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """The float32 batch of ``uint8`` ``pixels`` ``(B, 3, H, W)``, normalised by ``from_uint8`` on their device,
    with the rows whose image is not ``present`` (missing or unreadable: the dataset's blank, uint8 zeros) set to
    the float blank, zeros, as the float32 preprocessing gives them (``+0.0``)."""
    x = from_uint8(pixels)
    absent = ~present.to(torch.bool)
    if x.device.type == "cpu":  # only the blank rows are written (usually none): a mask over the batch costs more
        rows = absent.cpu().nonzero().flatten()  # than the normalisation itself
        return x.index_fill_(0, rows, 0.0) if len(rows) else x
    # on an accelerator, a mask (no host sync to find the rows)
    return x.masked_fill_(absent.to(x.device).reshape(-1, *([1] * (x.dim() - 1))), 0.0)


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
    """A loader of collated batches; images are decoded (in workers) only when the model runs its image encoder.

    Where the encoder's preprocessor splits (:func:`uint8_stages`), ``pixel_values`` are ``uint8``: turn batches
    into model inputs with an :class:`InputMaker` given the same ``image_encoder`` (see the module docstring).
    """
    preprocess = image_encoder.preprocess if plan.needs_pixels and image_encoder is not None else None
    stages = uint8_stages(preprocess)
    if stages is not None:
        preprocess = stages[0]
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
        image_encoder: the model's image encoder, the one given to :func:`make_loader`: when the plan reads pixels
            and its preprocessor splits (:func:`uint8_stages`), the batches' ``uint8`` pixels are normalised here,
            on ``device``.
    """

    def __init__(
        self,
        plan: FeaturePlan,
        tables: Tables,
        text_encoder: TextEncoder | None,
        image_encoder: ImageEncoder | None = None,
    ) -> None:
        self.plan, self.tables, self.text_encoder = plan, tables, text_encoder
        self.image_encoder = image_encoder
        stages = uint8_stages(image_encoder.preprocess) if image_encoder is not None else None
        self.from_uint8 = stages[1] if stages is not None else None

    def __call__(self, batch: dict[str, Any], device: torch.device | str) -> FusionInputs:
        rows = batch["index"].cpu()
        inputs = FusionInputs(image_present=batch["image_present"])
        if self.plan.reads_raw("text"):
            assert self.text_encoder is not None
            inputs.text_inputs = self.text_encoder.tokenize(list(batch["texts"]))
        elif self.plan.precomputes("text"):
            inputs.text_features = self._table("text").batch(rows)
        if self.plan.reads_raw("image"):
            inputs.pixel_values = self._pixels(batch, device)
        elif self.plan.precomputes("image"):
            table = self._table("image")
            inputs.image_features = table.batch(rows)
            inputs.image_present = table.present_of(rows)
        return inputs.to(device)

    def _pixels(self, batch: dict[str, Any], device: torch.device | str) -> torch.Tensor:
        """The batch's pixels as the encoder reads them: ``uint8`` ones moved to ``device``, then normalised."""
        pixels = batch["pixel_values"]
        if pixels.dtype == torch.uint8 and self.image_encoder is None:
            raise ValueError(
                "the batch carries uint8 pixel_values (make_loader sends them so for an image encoder whose "
                "preprocessing splits into to_uint8/from_uint8), but this InputMaker has no image encoder to "
                "normalise them; make it with InputMaker(plan, tables, text_encoder, image_encoder)"
            )
        if pixels.dtype != torch.uint8 or self.from_uint8 is None:
            return pixels  # float32 from the workers (or an encoder of one's own that reads uint8), moved by .to
        return finish_uint8(self.from_uint8, pixels.to(device), batch["image_present"])

    def _table(self, modality: str) -> FeatureTable:
        table = getattr(self.tables, modality)
        if table is None:
            raise ValueError(
                f"the feature plan precomputes {modality}, but no {modality} table was given; "
                "build the tables with compute_tables(model, plan, examples, source, ...)"
            )
        return table
