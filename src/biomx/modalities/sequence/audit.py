"""What the data audit asks of sequences (`protocols.AuditsData`): the token row for identical
sequences; a MinHash signature of each sequence's k-mers for near-identical ones (estimated
Jaccard similarity of the k-mer sets >= NEAR_JACCARD, Broder 1997); the length for outliers.

k is the smallest length whose possible k-mers outnumber the typical sequence's positions 16-fold
(2 for peptides of ~20 residues, 6 for DNA windows of ~200 bases), so unrelated sequences share few
k-mers while one substitution in a 20-residue peptide keeps an estimated Jaccard near 0.8."""

from __future__ import annotations

import numpy as np
import torch

from biomx.data.samples import Samples
from biomx.data.splits import row_digests
from biomx.data_audit.fingerprints import Fingerprints, NearVectors

HASHES = 64  # MinHash signature length
NEAR_JACCARD = 0.8  # estimated k-mer Jaccard similarity at or above which two sequences are near
PRIME = (1 << 31) - 1
ROW_CELLS = 4_000_000  # (rows x positions x hashes) per block


def _k_for(vocabulary: int, length: int) -> int:
    k = 1
    while vocabulary**k < 16 * max(length, 1) and k < 12:
        k += 1
    return max(k, 2)


def minhash(tokens: np.ndarray, lengths: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N, HASHES) int64: per hash function, the least hash of the sequence's k-mers; a sequence
    shorter than k gets a signature of its own (it matches nothing)."""
    vocabulary = int(tokens.max()) + 1 if tokens.size else 1
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, HASHES, dtype=np.int64)
    b = rng.integers(0, PRIME, HASHES, dtype=np.int64)
    n, width = tokens.shape
    positions = max(width - k + 1, 1)
    codes = np.zeros((n, positions), dtype=np.int64)
    for t in range(k):
        codes = codes * vocabulary + tokens[:, t:t + positions].astype(np.int64) if width >= k else codes
    codes %= PRIME
    valid = np.arange(positions)[None, :] < (lengths[:, None] - k + 1)
    out = np.empty((n, HASHES), dtype=np.int64)
    step = max(1, ROW_CELLS // (positions * HASHES))
    for s in range(0, n, step):
        hashed = (codes[s:s + step, :, None] * a[None, None, :] + b) % PRIME  # products stay below 2^62
        hashed[~valid[s:s + step]] = PRIME
        out[s:s + step] = hashed.min(axis=1)
    empty = ~valid.any(axis=1)
    out[empty] = -(np.flatnonzero(empty)[:, None] + 1)
    return out


def fingerprints(samples: Samples) -> Fingerprints | None:
    tokens = getattr(samples.inputs, "tokens", None)
    lengths = getattr(samples.inputs, "lengths", None)
    if not isinstance(tokens, torch.Tensor) or lengths is None or len(tokens) != len(samples.ids):
        return None
    t, n = tokens.numpy(), np.asarray(lengths, dtype=np.int64)
    used = t[np.arange(t.shape[1])[None, :] < n[:, None]]  # tokens before the padding
    k = _k_for(len(np.unique(used)) if used.size else 1, int(np.median(n)) if len(n) else 1)
    near = NearVectors(minhash(t, n, k), "minhash", NEAR_JACCARD, f"MinHash of {k}-mers ({HASHES} hashes), "
                       f"estimated Jaccard >= {NEAR_JACCARD}")  # fmt: skip
    return Fingerprints(row_digests(tokens), "identical sequence (token row)", near)


def describe_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    lengths = getattr(samples.inputs, "lengths", None)
    return None if lengths is None else {"length": np.asarray(lengths, dtype=np.float64)}
