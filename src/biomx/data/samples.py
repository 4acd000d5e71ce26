"""Samples of any modality, and how their label cells are read.

A modality's loader returns `Samples`: its inputs (a tensor, or a record of its own) with
index-aligned labels, ids and optional patient ids. Everything after that (splits, tasks, the trainer) is modality-independent, and each
task turns the labels into its own targets (`label_cells` and `where_of` help it do so).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomx.errors import DataError


@dataclass
class Samples:
    """Loaded samples, index-aligned."""

    # What the modality loaded, one row per sample: a tensor (images (N, C, H, W), volumes), or
    # the modality's own record (e.g. tokens with their lengths; structures with their features).
    inputs: Any
    labels: list  # one label per sample: a value, or a list (several names or label columns)
    ids: list[str]  # file path, record id, or "<npz split>:<row>"
    groups: np.ndarray | None = None  # patient ids (never written to the run)
    predefined: dict[str, np.ndarray] | None = None  # split name -> indices, from the source
    default_classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    hashes: list[str] | None = None  # sha256 per file (file sources)
    source_sha256: str | None = None
    where: dict[int, str] = field(default_factory=dict)  # index -> "file row N" for messages
    label_columns: list[str] | None = None  # several label columns: each label holds one cell per column


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def where_of(samples: Samples, i: int) -> str:
    """Where sample i came from, for messages: "file row N", else its id."""
    return samples.where.get(i, samples.ids[i])


def label_cells(samples: Samples, i: int, columns: list[str]) -> list:
    """Sample i's label cells, one per label column (the loader's contract)."""
    label = samples.labels[i]
    cells = label if isinstance(label, (list, tuple)) else [label]
    if len(cells) != len(columns):
        raise DataError(f"{where_of(samples, i)}: {len(cells)} label value(s) for the "
                        f"{len(columns)} label columns {columns}")
    return list(cells)
