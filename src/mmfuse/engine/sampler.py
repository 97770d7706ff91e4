"""The order of training examples: a seeded shuffle per epoch (:class:`EpochSampler`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


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
