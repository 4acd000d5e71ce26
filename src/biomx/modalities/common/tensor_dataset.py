"""Samples held in one tensor (or read from disk row by row), served as already-stacked batches.

`ImageTensorDataset.__getitems__` indexes and augments (e.g. `image.augment.Augment`) a whole
batch of the tensor at once, so loading costs milliseconds, not a Python loop per sample.
`RowTensorDataset` does the same for encoded rows (a table's, a patient history's) without
augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from biomx.data.batching import batch_generator


class ImageTensorDataset(Dataset):
    """Images held in one tensor, served as augmented, already-stacked batches.

    DataLoader calls `__getitems__` with a batch's indices; use
    `collate_fn=biomx.data.batching.collate_batch`.
    Each batch's random generator is seeded from (seed, epoch, first index, batch length), so
    augmentations are identical with any number of workers and after a resume. Call
    `set_epoch` before each epoch (with worker processes, before creating the iterator; do not
    use persistent_workers, which keep the old epoch).

    Volumes (N, C, D, H, W) are served the same way (`volume_pipeline`), with a 3D `augment`.

    `images` may also be rows read from disk on demand (`image.streaming.StreamedImages`: anything
    with `len`, `ndim`, `dtype`, `shape` and `images[index_tensor] -> tensor`): each batch then
    reads (or first decodes) its own rows, in whichever DataLoader worker builds it, and the batch
    is the same as from the tensor.

    Args:
        images: uint8 (divided by 255) or float16/float32, shaped (N, C, H, W) or (N, C, D, H, W);
            a tensor or an object indexed like one (above).
        targets: one per row of `index` (or of `images`): (M,) or (M, K).
        augment: batch augmentation `augment(x, generator) -> x`, or None.
        normalize: (mean, std), scalars or one per channel, applied after augmentation.
        seed: base seed of the augmentation.
        index: the rows of `images` this dataset serves (a split of a tensor shared with the
            other splits, not copied); None: every row.

    Raises:
        ValueError: wrong shapes, dtypes or normalize length.
    """

    def __init__(self, images: torch.Tensor | Any, targets: torch.Tensor, *,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 normalize: tuple[Sequence[float] | float, Sequence[float] | float] | None = None,
                 seed: int = 0, index: torch.Tensor | None = None) -> None:
        if images.ndim not in (4, 5) or images.dtype not in (torch.uint8, torch.float16, torch.float32):
            raise ValueError(f"images must be uint8/float16/float32 (N, C, H, W) or (N, C, D, H, W), got "
                             f"{images.dtype} {tuple(images.shape)}")
        self.index = None if index is None else torch.as_tensor(index, dtype=torch.long)
        rows = len(images) if self.index is None else len(self.index)
        if rows != len(targets):
            raise ValueError(f"{rows} images but {len(targets)} targets")
        self.images, self.targets = images, targets
        self.augment, self.seed, self.epoch = augment, seed, 0
        self.mean = self.std = None
        if normalize is not None:
            c, spatial = images.shape[1], [1] * (images.ndim - 2)
            self.mean, self.std = (torch.tensor(v, dtype=torch.float32).reshape(-1, *spatial)
                                   for v in normalize)
            if self.mean.shape[0] not in (1, c) or self.std.shape[0] not in (1, c):
                raise ValueError(f"normalize needs 1 or {c} values for mean and std")

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next batches' augmentations."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch (x float32 (B, C, *S), y) for `indices`, augmented."""
        index = torch.as_tensor(indices, dtype=torch.long)
        rows = index if self.index is None else self.index[index]
        x = self.images[rows].float()  # advanced indexing copies: in-place ops are safe
        if self.images.dtype == torch.uint8:
            x.div_(255)
        if self.augment is not None:
            x = self.augment(x, batch_generator(self.seed, self.epoch, indices))
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x, self.targets[index]


class RowTensorDataset(Dataset):
    """Rows of one encoded matrix. It holds every split's rows (explanations and baselines read
    the training rows through the test dataset) and serves the rows of its own split, `index`."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, index: np.ndarray) -> None:
        self.x, self.targets = x, targets
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(self.index[np.asarray(indices, dtype=np.int64)])
        return self.x[rows], self.targets[rows]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]
