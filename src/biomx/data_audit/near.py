"""Near-duplicate search over `NearVectors`: every pair of rows of one set, or of two sets, whose
vectors are near by the vectors' own metric. Exhaustive, in blocks (matrix products for bits,
comparisons for signatures), so its cost is known: rows_a x rows_b pairs; the audit caps rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomx.data_audit.fingerprints import NearVectors

MAX_KEPT_PAIRS = 100_000  # pairs kept for examples and label comparisons (all are counted)
BLOCK_CELLS = 20_000_000  # similarity-matrix cells per block (bounds memory)


@dataclass
class NearPairs:
    """Near pairs between two sets of rows (sample indices), or within one set."""

    count: int  # every near pair
    pairs: np.ndarray  # (K, 2) sample indices, the first from rows_a; at most MAX_KEPT_PAIRS
    matched_a: np.ndarray  # rows_a with at least one near row in rows_b (within one set: in a pair)


def _near_block(vectors: NearVectors, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) booleans: which pairs are near."""
    v = vectors.values
    if vectors.metric == "minhash":
        sa, sb = v[a], v[b]
        equal = (sa[:, None, :] == sb[None, :, :]).mean(axis=2)
        return equal >= vectors.threshold
    xa, xb = v[a].astype(np.float32), v[b].astype(np.float32)
    inter = xa @ xb.T
    na, nb = xa.sum(1)[:, None], xb.sum(1)[None, :]
    if vectors.metric == "hamming":
        return (na + nb - 2 * inter) <= vectors.threshold + 1e-3
    union = na + nb - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        similarity = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return similarity >= vectors.threshold - 1e-6


def near_pairs(vectors: NearVectors, rows_a: np.ndarray, rows_b: np.ndarray | None = None,
               exclude: list[str | None] | None = None) -> NearPairs:  # fmt: skip
    """Near pairs of rows_a x rows_b, or of rows_a among themselves (each pair once) when rows_b
    is None. Pairs whose `exclude` keys are equal (exact duplicates, reported apart) are skipped."""
    within = rows_b is None
    rows_b = rows_a if rows_b is None else rows_b
    width = vectors.values.shape[1] if vectors.metric == "minhash" else 1
    step = max(1, min(len(rows_a), BLOCK_CELLS // max(1, len(rows_b) * width)))
    keys = None if exclude is None else np.array([k if k is not None else f"\0{i}" for i, k in enumerate(exclude)],
                                                 dtype=object)  # fmt: skip
    count, kept, matched = 0, [], np.zeros(len(rows_a), dtype=bool)
    for start in range(0, len(rows_a), step):
        a = rows_a[start:start + step]
        near = _near_block(vectors, a, rows_b)
        if within:  # each unordered pair once, never a row with itself
            near &= np.arange(start, start + len(a))[:, None] < np.arange(len(rows_b))[None, :]
        if keys is not None and near.any():
            i, j = np.nonzero(near)
            same = keys[a[i]] == keys[rows_b[j]]
            near[i[same], j[same]] = False
        count += int(near.sum())
        matched[start:start + len(a)] |= near.any(axis=1)
        if within:  # rows_b is rows_a: the second row of a pair has a near row too
            matched |= near.any(axis=0)
        if sum(len(k) for k in kept) < MAX_KEPT_PAIRS:
            i, j = np.nonzero(near)
            kept.append(np.stack([a[i], rows_b[j]], axis=1))
    pairs = np.concatenate(kept)[:MAX_KEPT_PAIRS] if kept else np.zeros((0, 2), dtype=np.int64)
    return NearPairs(count, pairs, rows_a[matched])
