"""Token sequences served as augmented, already-stacked batches (`SequenceDataset`).

`SequenceDataset.__getitems__` shifts and reverse-complements a whole batch of tokens, then
one-hot encodes it (or hands the tokens to an embedding model).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from biomx.data.batching import batch_generator
from biomx.modalities.sequence.encoding import PAD, alphabet_spec, one_hot, reverse_complement_array


def _shift(tokens: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
           fill: int) -> np.ndarray:
    """Move each row's valid part right by offsets[i] (left if < 0) within its length; the
    uncovered positions get `fill`, the padding stays."""
    columns = np.arange(tokens.shape[1])
    source = columns - offsets[:, None]
    inside = (source >= 0) & (source < lengths[:, None])
    moved = np.take_along_axis(tokens, source.clip(0, tokens.shape[1] - 1), 1)
    moved = np.where(inside, moved, fill)
    return np.where(columns < lengths[:, None], moved, PAD).astype(np.uint8)


class SequenceDataset(Dataset):
    """Token sequences served as augmented, already-stacked batches.

    DataLoader calls `__getitems__` with a batch's indices; use
    `collate_fn=biomx.data.batching.collate_batch`. As in `ImageTensorDataset`, a batch's
    generator is seeded from (seed, epoch, first index, batch length): the same augmentations
    with any number of workers and after a resume. Call `set_epoch` before each epoch.

    Args:
        tokens: uint8 (N, L) from `encode`, on the CPU.
        targets: (N,) or (N, K).
        alphabet: the tokens' alphabet.
        lengths: valid lengths (N,); None = each row's non-PAD count.
        representation: "onehot": x float32 (B, A, L); "tokens": x int64 (B, L) for an
            embedding of `vocab_size` rows, PAD = the last.
        rc_augment: reverse complement each sample with probability 0.5 (DNA/RNA only).
        shift: move each sample by a uniform offset in [-shift, shift] within its length; the
            uncovered positions become N (protein: X).
        seed: base seed of the augmentation.

    Raises:
        ValueError: bad shapes, dtypes or options; rc_augment for protein.
    """

    def __init__(self, tokens: torch.Tensor, targets: torch.Tensor, *, alphabet: str = "dna",
                 lengths: torch.Tensor | None = None, representation: str = "onehot",
                 rc_augment: bool = False, shift: int = 0, seed: int = 0) -> None:
        self.spec = alphabet_spec(alphabet)
        if tokens.ndim != 2 or tokens.dtype != torch.uint8 or len(tokens) != len(targets):
            raise ValueError(f"need uint8 tokens (N, L) and N targets, got {tokens.dtype} "
                             f"{tuple(tokens.shape)} and {len(targets)} targets")
        if representation not in ("onehot", "tokens") or shift < 0:
            raise ValueError(f"representation must be 'onehot' or 'tokens' and shift >= 0, got "
                             f"{representation!r}, {shift}")
        if rc_augment and alphabet == "protein":
            raise ValueError("rc_augment needs DNA or RNA: proteins have no reverse complement")
        self.tokens, self.targets, self.alphabet = tokens, targets, alphabet
        self.lengths = (tokens != PAD).sum(1) if lengths is None else lengths
        self.representation, self.rc_augment, self.shift = representation, rc_augment, shift
        self.seed, self.epoch = seed, 0

    @property
    def vocab_size(self) -> int:
        """Embedding rows for representation="tokens": letters, codes, then PAD."""
        return len(self.spec.letters) + len(self.spec.codes) + 1

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next batches' augmentations."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch (x, y) for `indices`, augmented, x as set by `representation`."""
        index = np.asarray(indices, dtype=np.int64)
        tokens, lengths = self.tokens.numpy()[index], self.lengths.numpy()[index]
        if self.shift or self.rc_augment:
            generator = batch_generator(self.seed, self.epoch, indices)
            if self.shift:
                offsets = torch.randint(-self.shift, self.shift + 1, (len(index),),
                                        generator=generator)
                tokens = _shift(tokens, lengths, offsets.numpy(), self.spec.fill)
            if self.rc_augment:
                flip = (torch.rand(len(index), generator=generator) < 0.5).numpy()
                tokens = np.where(flip[:, None], reverse_complement_array(tokens, lengths), tokens)
        y = self.targets.index_select(0, torch.from_numpy(index))  # see `one_hot` on threads
        if self.representation == "onehot":
            return one_hot(torch.from_numpy(tokens), self.alphabet), y
        x = tokens.astype(np.int64)
        x[x == PAD] = self.vocab_size - 1
        return torch.from_numpy(x), y
