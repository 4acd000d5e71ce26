"""k-mer counts of token sequences: features for classical baselines."""

from __future__ import annotations

import numpy as np
import torch

from biomx.modalities.sequence.encoding import alphabet_spec


def kmer_counts(tokens: torch.Tensor, k: int = 5, alphabet: str = "dna") -> np.ndarray:
    """Count each sequence's k-mers; windows with an ambiguity code or PAD are skipped.

    Column j is the k-mer whose letters, as base-A digits in `ALPHABETS` order, spell j (DNA:
    column 0 = "AA..A", 1 = "AA..C").

    Args:
        tokens: uint8 (N, L) from `encode`.
        k: the k-mer length.
        alphabet: the tokens' alphabet (A letters).

    Returns:
        float32 (N, A**k) counts.

    Raises:
        ValueError: k < 1, or more than 2**24 k-mers.
    """
    a = len(alphabet_spec(alphabet).letters)
    if k < 1 or a**k > 2**24:
        raise ValueError(f"k must be >= 1 with at most 2**24 k-mers, got k={k} for {alphabet}")
    t = tokens.numpy().astype(np.int64)
    n, windows = len(t), t.shape[1] - k + 1
    out = np.zeros((n, a**k), np.float32)
    if windows <= 0:
        return out
    code, good = np.zeros((n, windows), np.int64), np.ones((n, windows), bool)
    for m in range(k):  # a loop over the k letters of a window, not over positions
        code = code * a + t[:, m:m + windows]
        good &= t[:, m:m + windows] < a
    block = max(1, 2**22 // a**k)  # rows per bincount, bounding its int64 memory
    code += np.arange(n)[:, None] % block * a**k  # each row of a block gets its own bins
    for lo in range(0, n, block):
        rows = min(block, n - lo)
        flat = code[lo:lo + rows][good[lo:lo + rows]]
        out[lo:lo + rows] = np.bincount(flat, minlength=rows * a**k).reshape(rows, a**k)
    return out
