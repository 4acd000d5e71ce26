"""Helpers shared by the batched datasets of every modality."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate


def batch_generator(seed: int, epoch: int, indices: list[int]) -> torch.Generator:
    """A generator seeded by (seed, epoch, first index, batch size) for a batch's augmentations.

    The same batch gets the same random draws whatever the number of DataLoader workers and
    after a resume, because nothing depends on global RNG state or on which worker runs it.
    """
    key = [seed, epoch, int(indices[0]), len(indices)]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0]))


def collate_batch(batch: Any) -> Any:
    """DataLoader collate_fn for datasets with `__getitems__`: an already-built (x, y) batch
    passes through unchanged (x a stacked tensor, or a graph batch with .to() for molecules);
    anything else goes to torch's default_collate."""
    if (isinstance(batch, tuple) and len(batch) == 2
            and isinstance(batch[1], torch.Tensor) and batch[1].ndim > 0
            and (isinstance(batch[0], torch.Tensor) and len(batch[0]) == len(batch[1])
                 or not isinstance(batch[0], torch.Tensor) and hasattr(batch[0], "to"))):  # fmt: skip
        return batch
    return default_collate(batch)
