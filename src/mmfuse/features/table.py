"""Feature tables: one frozen encoder's outputs for one list of examples, and the interface that supplies them.

- :class:`FeatureTable`: row ``i`` = example ``i``; :meth:`FeatureTable.batch` gives an
  :class:`~mmfuse.encoders.base.EncoderOutput` for a batch of rows.
- :class:`FeatureSource`: anything with ``get(encoder, examples, *, need_sequence, ...) -> FeatureTable``: the
  in-process memo (:class:`~mmfuse.features.store.FeatureStore`) or the persistent cache
  (:class:`mmfuse.cache.FeatureCache`).
- :func:`content_key`: a hash of everything a table depends on (the encoder's identity and each example's input).

Sequences (text tokens, image grids) are stored packed: the rows of every example one after the other, up to its
last valid position, so variable-length texts take no padding; :meth:`FeatureTable.batch` pads a batch again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn.utils.rnn import pad_sequence

from mmfuse.data.example import Example
from mmfuse.encoders.base import Encoder, EncoderOutput, TextEncoder


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
        grid: ``(h, w)`` of an image encoder's region grid (every example's ``h·w`` rows are its cells,
            row-major), as the encoder returned it (:attr:`EncoderOutput.grid`); ``None`` for text, without
            sequences, or for an encoder that does not say.
    """

    pooled: torch.Tensor
    values: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    present: torch.Tensor | None = None
    grid: tuple[int, int] | None = None

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
        return EncoderOutput(pooled=pooled, sequence=seq, mask=mask.bool(), grid=self.grid)

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
        grids = {out.grid for out in outputs}
        if len(grids) > 1:  # one preprocessing gives every image one size, hence one grid
            raise ValueError(f"the encoder returned image grids of different shapes {sorted(grids, key=str)}")
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
        return cls(pooled, torch.cat(values), torch.cat(valid).bool(), offsets, present, grids.pop())


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

    Images are keyed by path, size and modification time (their content read lazily by the encoder run); the
    examples of an encoder that reads features by id (``precomputed``) by their ids.
    """
    h = hashlib.sha256()
    h.update(json.dumps(encoder.cache_identity(), sort_keys=True, default=str).encode())
    h.update(b"seq" if need_sequence else b"pooled")
    text = isinstance(encoder, TextEncoder)
    for e in examples:
        if encoder.reads_example_ids:
            h.update(e.id.encode("utf-8", "surrogatepass"))
        elif text:
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
