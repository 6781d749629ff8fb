"""A per-epoch seeded sampler: the data order of epoch e is a pure function of (seed, e)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler):
    """Yields (epoch, index) for every index, shuffled by a generator seeded with (seed, epoch).

    The order of epoch e is a pure function of (seed, e): a resumed run sees the same batches, and the
    dataset can seed each sample's augmentation from the pair. Call `start_epoch` before each epoch (not named
    `set_epoch` on purpose: accelerate's dataloader would overwrite it with its own pass counter, which restarts
    at 0 in a resumed run).
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        return iter([(self.epoch, i) for i in order])
