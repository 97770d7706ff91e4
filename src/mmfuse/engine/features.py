"""Features of frozen encoders, computed once per dataset and reused.

A frozen encoder gives the same output for an example every epoch, so the engine runs it once over a dataset
(batched, under ``torch.inference_mode``, images decoded in DataLoader workers) and trains and evaluates the head from
the stored features. Everything goes through one narrow interface:

- :class:`FeatureTable`: one encoder's outputs for one list of examples (row ``i`` = example ``i``), with
  :meth:`FeatureTable.batch` giving an :class:`~mmfuse.encoders.base.EncoderOutput` for a batch of rows.
- :class:`FeatureSource`: anything with ``get(encoder, examples, *, need_sequence, ...) -> FeatureTable``.
  :class:`FeatureStore` (here) memoizes tables in this process, keyed by the encoder's ``cache_identity()`` and
  the examples' content, so a second model in the same process (the demo's seven heads, a sweep) reuses them; a
  persistent on-disk cache can implement the same ``get`` (and call :func:`compute_features` on a miss).

Sequences (text tokens, image grids) are stored packed: the rows of every example one after the other, up to its
last valid position, so variable-length texts take no padding; :meth:`FeatureTable.batch` pads a batch again.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from mmfuse.data.dataset import MultimodalDataset, collate_examples
from mmfuse.data.example import Example
from mmfuse.encoders.base import Encoder, EncoderOutput, ImageEncoder, TextEncoder


@dataclass
class FeatureTable:
    """One encoder's outputs for N examples.

    Attributes:
        pooled: ``(N, D)``.
        values: ``(M, D_seq)`` the sequence rows of all examples, packed; ``None`` without sequences.
        valid: ``(M,)`` bool, the encoder's mask for each packed row.
        offsets: ``(N + 1,)`` long; example ``i`` owns packed rows ``offsets[i]:offsets[i + 1]``.
        present: ``(N,)`` bool, for images: ``False`` where the image was missing or unreadable and a blank stood
            in; ``None`` for text.
    """

    pooled: torch.Tensor
    values: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    present: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.pooled.shape[0]

    @property
    def has_sequence(self) -> bool:
        return self.values is not None

    def batch(self, rows: torch.Tensor | Sequence[int]) -> EncoderOutput:
        """The features of ``rows`` as an encoder would return them: sequences padded to the batch's longest.

        Padding rows carry ``mask = False`` (and zeros).
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        pooled = self.pooled[rows]
        if self.values is None:
            return EncoderOutput(pooled=pooled)
        assert self.offsets is not None and self.valid is not None
        starts, ends = self.offsets[rows].tolist(), self.offsets[rows + 1].tolist()
        seq = pad_sequence([self.values[s:e] for s, e in zip(starts, ends, strict=True)], batch_first=True)
        mask = pad_sequence([self.valid[s:e] for s, e in zip(starts, ends, strict=True)], batch_first=True)
        return EncoderOutput(pooled=pooled, sequence=seq, mask=mask.bool())

    def present_of(self, rows: torch.Tensor | Sequence[int]) -> torch.Tensor | None:
        """``image_present`` of ``rows`` (``None`` for text tables)."""
        if self.present is None:
            return None
        return self.present[torch.as_tensor(rows, dtype=torch.long)]

    def pooled_only(self) -> FeatureTable:
        """The same table without its sequences (what a pooled head needs)."""
        return FeatureTable(pooled=self.pooled, present=self.present)

    @classmethod
    def from_outputs(cls, outputs: list[EncoderOutput], *, keep_sequence: bool, present: torch.Tensor | None = None):
        """Packs encoder outputs of consecutive batches into one table (on CPU)."""
        pooled = torch.cat([o.pooled.float().cpu() for o in outputs])
        if not keep_sequence:
            return cls(pooled=pooled, present=present)
        values, valid, lengths = [], [], []
        for out in outputs:
            if out.sequence is None:
                raise ValueError("this head reads the encoder's sequence/grid, but the encoder returned none")
            seq = out.sequence.float().cpu()
            mask = out.mask.cpu() if out.mask is not None else torch.ones(seq.shape[:2], dtype=torch.bool)
            for i in range(seq.shape[0]):
                hits = mask[i].nonzero()
                n = int(hits[-1]) + 1 if len(hits) else 1  # keep up to the last valid row (at least one)
                values.append(seq[i, :n])
                valid.append(mask[i, :n])
                lengths.append(n)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
        return cls(pooled, torch.cat(values), torch.cat(valid).bool(), offsets, present)


class FeatureSource(Protocol):
    """Where the engine gets features of frozen encoders from (the in-process memo, or a persistent cache)."""

    def get(
        self,
        encoder: Encoder,
        examples: Sequence[Example],
        *,
        need_sequence: bool,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        num_workers: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureTable:
        """Features of ``encoder`` (frozen) for ``examples``, row ``i`` for example ``i``."""
        ...


def content_key(encoder: Encoder, examples: Sequence[Example], need_sequence: bool) -> str:
    """A hash of everything the features depend on: the encoder's identity and each example's input.

    Images are keyed by path, size and modification time (their content read lazily by the encoder run).
    """
    h = hashlib.sha256()
    h.update(json.dumps(encoder.cache_identity(), sort_keys=True, default=str).encode())
    h.update(b"seq" if need_sequence else b"pooled")
    text = isinstance(encoder, TextEncoder)
    for e in examples:
        if text:
            h.update(e.text.encode("utf-8", "surrogatepass"))
        elif e.image is None:
            h.update(b"<none>")
        else:
            try:
                st = e.image.stat()
                h.update(f"{e.image}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{e.image}|missing".encode())
        h.update(b"\x00")
    return h.hexdigest()


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


class FeatureStore:
    """In-process memo of feature tables (least recently used first out).

    A table with sequences also serves requests for pooled features only.

    Args:
        max_tables: how many tables to keep.
    """

    def __init__(self, max_tables: int = 16) -> None:
        self.max_tables = max_tables
        self._tables: OrderedDict[str, FeatureTable] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        encoder: Encoder,
        examples: Sequence[Example],
        *,
        need_sequence: bool,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        num_workers: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> FeatureTable:
        """Features from the memo, or computed (and memoized) on a miss. See :func:`compute_features`."""
        keys = [content_key(encoder, examples, True)]
        if not need_sequence:
            keys.append(content_key(encoder, examples, False))
        for key in keys:
            if key in self._tables:
                self._tables.move_to_end(key)
                self.hits += 1
                table = self._tables[key]
                if progress is not None:  # done at once: the progress still adds up to len(examples)
                    progress(len(examples))
                return table if need_sequence else table.pooled_only()
        self.misses += 1
        table = compute_features(
            encoder,
            examples,
            need_sequence=need_sequence,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        self._tables[keys[-1]] = table
        while len(self._tables) > self.max_tables:
            self._tables.popitem(last=False)
        return table

    def clear(self) -> None:
        self._tables.clear()


_DEFAULT_STORE = FeatureStore()


def default_store() -> FeatureStore:
    """The process-wide store the engine uses unless given another."""
    return _DEFAULT_STORE


def source_for(enabled: bool, folder: str | None) -> FeatureSource:
    """Where a run gets features of frozen encoders, as its ``cache`` config says: the persistent feature cache
    (:func:`mmfuse.cache.feature_source`: ``folder``, else ``$MMFUSE_CACHE_DIR``, else ``~/.cache/mmfuse``; one per
    folder and process), or the in-process memo when ``enabled`` is false or the folder is ``off``."""
    if not enabled:
        return default_store()
    from mmfuse.cache.source import feature_source

    return feature_source(folder)


def describe(source: Any) -> dict[str, Any]:
    """Hit/miss counts of a source, when it keeps them (for logs)."""
    return {k: getattr(source, k) for k in ("hits", "misses") if hasattr(source, k)}
