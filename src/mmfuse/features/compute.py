"""Running a frozen encoder over a dataset once: :func:`compute_features`.

A frozen encoder gives the same output for an example every epoch, so it runs once over a dataset (batched, under
``torch.inference_mode``, images decoded in DataLoader workers) and the head trains and evaluates from the stored
:class:`~mmfuse.features.table.FeatureTable`. Every :class:`~mmfuse.features.table.FeatureSource` calls this on a
miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader

from mmfuse.data.dataset import MultimodalDataset, collate_examples
from mmfuse.data.example import Example
from mmfuse.encoders.base import Encoder, EncoderOutput, ImageEncoder, TextEncoder
from mmfuse.features.table import FeatureTable


@torch.inference_mode()
def compute_features(
    encoder: Encoder,
    examples: Sequence[Example],
    *,
    need_sequence: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FeatureTable:
    """Runs a frozen ``encoder`` over ``examples`` once, in eval mode and under ``torch.inference_mode``.

    Args:
        encoder: a text or image encoder (its weights are not changed; it is left in eval mode).
        examples: the examples, in table row order.
        need_sequence: keep the token sequence / region grid, not only the pooled vector.
        device: where to run the encoder (it is moved there).
        batch_size: examples per encoder batch.
        num_workers: DataLoader workers that open and preprocess images.
        progress: called with the number of examples done after each batch.
    """
    encoder.eval().to(device)
    outputs: list[EncoderOutput] = []
    if encoder.reads_example_ids:  # features computed elsewhere, looked up by id (the precomputed encoders)
        out, present = encoder.encode_ids([e.id for e in examples], need_sequence=need_sequence)
        if progress is not None:
            progress(len(examples))
        image = isinstance(encoder, ImageEncoder)
        return FeatureTable.from_outputs([out], keep_sequence=need_sequence, present=present if image else None)
    if isinstance(encoder, TextEncoder):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            inputs = {k: v.to(device) for k, v in encoder.tokenize([e.text for e in chunk]).items()}
            outputs.append(encoder(inputs))
            if progress is not None:
                progress(len(chunk))
        return FeatureTable.from_outputs(outputs, keep_sequence=need_sequence)
    assert isinstance(encoder, ImageEncoder), f"not a text or image encoder: {type(encoder).__name__}"
    dataset = MultimodalDataset(examples, label_map=None, image_preprocess=encoder.preprocess)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_examples)
    present = []
    for batch in loader:
        outputs.append(encoder(batch["pixel_values"].to(device)))
        present.append(batch["image_present"])
        if progress is not None:
            progress(len(batch["ids"]))
    return FeatureTable.from_outputs(outputs, keep_sequence=need_sequence, present=torch.cat(present))
