"""Samplers of the Trainer's loaders: a resumable distributed one for training, shards for
evaluation."""

from __future__ import annotations

import itertools

from torch.utils.data import DistributedSampler, Sampler


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler that can start part-way into an epoch (mid-epoch resume).

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    """

    start = 0  # samples of this rank's epoch already consumed

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return super().__len__() - self.start


class ShardSampler(Sampler[int]):
    """Each rank takes every world_size-th sample, in order, with no padding (evaluation)."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
