"""Near-duplicate search over `NearVectors`: every pair of rows of one set, or of two sets, whose
vectors are near by the vectors' own metric. Bits are compared exhaustively in blocks (matrix
products: rows_a x rows_b pairs, so the audit caps the rows); signatures (minhash) by banding
(Leskovec et al., Mining of Massive Datasets, ch. 3): rows sharing one band of BANDS equal entries
are candidates, each candidate checked on the whole signature. With 16 bands of 4 hashes a pair
at the audit's Jaccard 0.8 is a candidate with probability 0.9998."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomx.data_audit.fingerprints import NearVectors

MAX_KEPT_PAIRS = 100_000  # pairs kept for examples and label comparisons (all are counted)
BLOCK_CELLS = 20_000_000  # similarity-matrix cells per block (bounds memory)
BANDS = 16  # minhash bands


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


def _band_candidates(signatures: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, within: bool) -> np.ndarray:
    """(K, 2) positions (in rows_a, in rows_b) of rows sharing at least one whole band."""
    import pandas as pd

    width = max(1, signatures.shape[1] // BANDS)
    weights = np.random.default_rng(0).integers(1, 2**62, width, dtype=np.int64).astype(np.uint64)
    found = []
    for start in range(0, signatures.shape[1] - width + 1, width):
        band = signatures[:, start:start + width].astype(np.uint64)
        keys = (band * weights).sum(axis=1)  # wraps modulo 2^64: a hash of the band
        a = pd.DataFrame({"key": keys[rows_a], "i": np.arange(len(rows_a))})
        b = pd.DataFrame({"key": keys[rows_b], "j": np.arange(len(rows_b))})
        pairs = a.merge(b, on="key")[["i", "j"]].to_numpy()
        found.append(pairs[pairs[:, 0] < pairs[:, 1]] if within else pairs)
    both = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.unique(both, axis=0) if len(both) else both.reshape(0, 2).astype(np.int64)


def _signature_pairs(vectors: NearVectors, rows_a: np.ndarray, rows_b: np.ndarray, within: bool,
                     keys: np.ndarray | None) -> NearPairs:  # fmt: skip
    candidates = _band_candidates(vectors.values, rows_a, rows_b, within)
    i, j = rows_a[candidates[:, 0]], rows_b[candidates[:, 1]]
    equal = (vectors.values[i] == vectors.values[j]).mean(axis=1) if len(i) else np.zeros(0)
    near = equal >= vectors.threshold
    if keys is not None:
        near &= keys[i] != keys[j]
    matched = np.zeros(len(rows_a), dtype=bool)
    matched[candidates[near, 0]] = True
    if within:
        matched[candidates[near, 1]] = True
    pairs = np.stack([i[near], j[near]], axis=1)
    return NearPairs(int(near.sum()), pairs[:MAX_KEPT_PAIRS], rows_a[matched])


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
    if vectors.metric == "minhash":
        return _signature_pairs(vectors, rows_a, rows_b, within, keys)
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
