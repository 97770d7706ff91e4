"""The in-process memo of feature tables: :class:`FeatureStore`, and the one the process shares.

It keys tables by :func:`~mmfuse.features.table.content_key` (the encoder's ``cache_identity()`` and the examples'
content), so a second model in the same process (the demo's seven heads, a sweep) reuses them. The persistent
on-disk cache (:mod:`mmfuse.cache`) implements the same ``get``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mmfuse.data.example import Example
from mmfuse.encoders.base import Encoder
from mmfuse.features.compute import compute_features
from mmfuse.features.table import FeatureTable, content_key


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


def describe(source: Any) -> dict[str, Any]:
    """Hit/miss counts of a source, when it keeps them (for logs)."""
    return {k: getattr(source, k) for k in ("hits", "misses") if hasattr(source, k)}
