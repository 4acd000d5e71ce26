"""Streaming a shard set to many ranks and DataLoader workers, every sample once per epoch.

How an epoch is split (docs/shards.md):

1. The shards are put in an order drawn from `(seed, epoch)` (the same on every rank), and their
   samples, in that order, form one sequence of N samples.
2. The sequence is cut into `world_size` contiguous, equal slices, one per rank. Equal matters:
   DDP needs the same number of batches on every rank, or the rank with more waits forever in
   its all-reduce. When N does not divide evenly, `uneven="pad"` (the default, as
   `DistributedSampler`) repeats the first `world_size*ceil(N/world_size) - N` samples of the
   sequence (fewer than `world_size` repeats an epoch; a different few each epoch), and
   `uneven="drop"` leaves out the last `N mod world_size` (a different few each epoch).
3. Each rank's slice is cut the same way into one contiguous part per DataLoader worker (sizes
   differing by at most one; as every rank's slice has the same length, every rank gets the same
   batch count).
4. A part is read as runs of consecutive samples, one `pread` of the byte range per run (at most
   `read_bytes`): sequential reads of whole shards or of a shard's beginning or end where a
   slice boundary falls inside it (then two neighbours each read only their own samples).
5. A bounded shuffle buffer (`buffer_size`, drawn from `(seed, epoch, rank, worker)`) mixes
   the samples within a worker; `decode` then turns each sample's members into tensors.

Shards are assigned by sample count, not by file, so the split is exact however many shards
there are (fewer shards than ranks x workers is fine) and however uneven their sizes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from biomx.data.shards import BLOCK, ShardIndex, check_header, open_shards
from biomx.errors import ConfigError, DataError

Segment = tuple[int, int, int]  # (shard position, first sample in it, stop), sample numbers local to the shard
UNEVEN = ("pad", "drop")


def shard_order(counts: list[int], epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The epoch's shard order: a permutation drawn from (seed, epoch), or as written."""
    if not shuffle:
        return np.arange(len(counts))
    return np.random.default_rng([seed, epoch]).permutation(len(counts))


def per_rank(total: int, world: int, uneven: str) -> int:
    """Samples each rank yields in an epoch."""
    return math.ceil(total / world) if uneven == "pad" else total // world


def epoch_plan(counts: list[int], *, epoch: int, seed: int, shuffle: bool, rank: int, world: int,
               worker: int = 0, workers: int = 1, uneven: str = "pad") -> list[Segment]:
    """The runs of consecutive samples one worker of one rank reads in an epoch (see the module
    docstring): `(shard, first, stop)` with sample numbers local to the shard, in reading order."""
    order = shard_order(counts, epoch, seed, shuffle)
    total = sum(counts)
    length = per_rank(total, world, uneven)
    base, extra = divmod(length, workers)
    lo = rank * length + worker * base + min(worker, extra)
    hi = lo + base + (worker < extra)
    ordered = [counts[s] for s in order]
    starts = np.concatenate([[0], np.cumsum(ordered)]).astype(np.int64)
    segments: list[Segment] = []
    position = lo
    while position < hi and total:
        wrapped = position % total  # past the end: the padding repeats the sequence's start
        k = int(np.searchsorted(starts, wrapped, side="right") - 1)
        first = wrapped - int(starts[k])
        take = min(hi - position, ordered[k] - first)
        segments.append((int(order[k]), first, first + take))
        position += take
    return segments


def _shuffled(items: Iterator[dict[str, Any]], size: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    """A bounded shuffle: hold `size` samples, yield a random one as each new one comes in."""
    buffer: list[dict[str, Any]] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], item = item, buffer[j]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """The samples of a shard set, streamed shard by shard, split over ranks and workers.

    Each item is `decode(sample)`, where `sample` maps each member extension to its bytes plus
    `__key__`, `__index__` (the sample's number in the set) and `__shard__` (the shard's file
    name); without `decode`, the sample itself. Call `set_epoch(epoch)` before each epoch (the
    trainer does) for a new shard order and shuffle. `len()` is the samples per rank.

    Args:
        shards: a `ShardIndex`, or a set's folder / `index.json` (`open_shards`: a folder
            without an index is scanned).
        decode: turns a sample (dict) into what the DataLoader collates (e.g. tensors).
        shuffle: draw the shard order and shuffle within the buffer (False: the written order).
        seed: the seed of the shard order and the buffer (with the epoch, rank and worker).
        buffer_size: samples held by the shuffle buffer (memory: this many raw samples).
        uneven: "pad" or "drop", when the samples do not divide evenly over the ranks.
        rank, world_size: default torch.distributed's when it is initialised, else 0 and 1.
        read_bytes: the most bytes one read takes in (a run of samples is split beyond it).
    """

    def __init__(self, shards: ShardIndex | str | Path, decode: Callable[[dict[str, Any]], Any] | None = None, *,
                 shuffle: bool = True, seed: int = 0, buffer_size: int = 1000, uneven: str = "pad",
                 rank: int | None = None, world_size: int | None = None, read_bytes: int = 32 << 20) -> None:
        if uneven not in UNEVEN:
            raise ConfigError(f"ShardStream uneven={uneven!r}: expected one of {', '.join(UNEVEN)}")
        if buffer_size < 0 or read_bytes < 1:
            raise ConfigError("ShardStream: buffer_size must be >= 0 and read_bytes >= 1")
        self.index = shards if isinstance(shards, ShardIndex) else open_shards(shards)
        self.decode, self.shuffle, self.seed, self.buffer_size = decode, shuffle, seed, buffer_size
        self.uneven, self.read_bytes = uneven, read_bytes
        self._rank, self._world = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rank_and_world(self) -> tuple[int, int]:
        if self._world is not None:
            rank, world = self._rank or 0, self._world
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise ConfigError(f"ShardStream: rank {rank} is outside world size {world}")
        if per_rank(len(self.index), world, self.uneven) == 0:
            raise ConfigError(f"{self.index.source}: {len(self.index)} samples for {world} ranks: "
                              f"uneven={self.uneven!r} leaves each rank none (use 'pad', or fewer ranks)")  # fmt: skip
        return rank, world

    def __len__(self) -> int:
        return per_rank(len(self.index), self.rank_and_world()[1], self.uneven)

    def __iter__(self) -> Iterator[Any]:
        rank, world = self.rank_and_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        counts = [s.count for s in self.index.shards]
        plan = epoch_plan(counts, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle, rank=rank, world=world,
                          worker=worker, workers=workers, uneven=self.uneven)  # fmt: skip
        samples = (sample for segment in plan for sample in self._read(segment))
        if self.shuffle and self.buffer_size > 1:
            rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 1])
            samples = _shuffled(samples, self.buffer_size, rng)
        for sample in samples:
            yield sample if self.decode is None else self.decode(sample)

    def _runs(self, shard: int, first: int, stop: int) -> Iterator[tuple[int, int]]:
        """Sub-runs of samples [first, stop) whose byte span fits in `read_bytes`."""
        index, start = self.index, self.index.shards[shard].start
        lo, span = first, 0
        for i in range(first, stop):
            begin, end = index.members.span(start + i)
            size = end - begin + BLOCK
            if i > lo and span + size > self.read_bytes:
                yield lo, i
                lo, span = i, 0
            span += size
        if lo < stop:
            yield lo, stop

    def _read(self, segment: Segment) -> Iterator[dict[str, Any]]:
        shard, first, stop = segment
        index = self.index
        info = index.shards[shard]
        path = index.path(shard)
        fd = index.descriptor(shard)  # checks the file's size against the index
        for lo, hi in self._runs(shard, first, stop):
            spans = [index.members[info.start + i] for i in range(lo, hi)]
            begin = min(o for o, _ in spans[0].values()) - BLOCK
            end = max(o + s for o, s in spans[-1].values())
            data = _read_range(fd, begin, end, path, f"{index.keys[info.start + lo]}")
            for i, members in zip(range(lo, hi), spans, strict=True):
                number = info.start + i
                key = index.keys[number]
                sample: dict[str, Any] = {"__key__": key, "__index__": number, "__shard__": info.name}
                for ext, (offset, size) in members.items():
                    at = offset - begin
                    if index.checked:
                        check_header(data[at - BLOCK:at], f"{key}.{ext}", size, path)
                    sample[ext] = data[at:at + size]
                yield sample


def _read_range(fd: int, begin: int, end: int, path: Path, key: str) -> bytes:
    data = os.pread(fd, end - begin, begin)
    if len(data) != end - begin:
        raise DataError(f"{path}: sample {key!r} onwards lies past the end of the shard (truncated)")
    return data
