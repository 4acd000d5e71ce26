"""What a modality hands the data audit about its samples (`protocols.AuditsData`).

A modality's `fingerprints(samples)` returns `Fingerprints`: one exact key per sample (equal keys,
identical inputs: a content hash, a chemical identifier, a hash of a feature row) and, where it
can, `NearVectors` in which "near" has a documented meaning (a perceptual hash within a few bits,
a set similarity above a threshold). The audit compares them without knowing what they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# hamming: 0/1 bits; near when at most `threshold` bits differ.
# tanimoto: 0/1 bits; near when |a and b| / |a or b| >= threshold.
# minhash: integer signatures; near when the fraction of equal entries (an estimate of the
#   Jaccard similarity of the sets hashed) >= threshold.
Metric = Literal["hamming", "tanimoto", "minhash"]


@dataclass
class NearVectors:
    """One vector per sample and when two of them count as near-duplicates."""

    values: np.ndarray  # (N, B) 0/1 bits (hamming, tanimoto) or (N, M) integer signatures (minhash)
    metric: Metric
    threshold: float
    method: str  # one line for the report, e.g. "64-bit DCT hash, Hamming distance <= 6"


@dataclass
class Fingerprints:
    """Exact keys (None: not comparable) and optional near-duplicate vectors, index-aligned."""

    exact: list[str | None]
    method: str  # what an exact key is, e.g. "hash of the decoded pixels"
    near: NearVectors | None = None


def bits_from_bools(bits: np.ndarray) -> np.ndarray:
    """(N, B) booleans as the uint8 0/1 matrix `NearVectors` holds."""
    return np.ascontiguousarray(bits, dtype=np.uint8)
