"""Samples of any modality, and their labels as targets.

A modality's loader returns `Samples`: one tensor of inputs (images, token ids, ...) with
index-aligned labels, ids and optional patient ids / chromosomes. Everything after that
(splits, tasks, the trainer) is modality-independent.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from biomx.errors import DataError


@dataclass
class Samples:
    """Loaded samples, index-aligned."""

    inputs: torch.Tensor  # (N, ...): images (N, C, H, W), sequence tokens (N, L), ...
    labels: list  # class name per sample, or a list of names (multilabel)
    ids: list[str]  # file path, record id, or "<npz split>:<row>"
    groups: np.ndarray | None = None  # patient ids (never written to the run)
    chromosomes: np.ndarray | None = None  # for chromosome hold-out splits (genomics)
    predefined: dict[str, np.ndarray] | None = None  # split name -> indices, from the source
    default_classes: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    hashes: list[str] | None = None  # sha256 per file (file sources)
    source_sha256: str | None = None
    where: dict[int, str] = field(default_factory=dict)  # index -> "file row N" for messages
    extra: dict = field(default_factory=dict)  # modality-specific (e.g. sequence lengths)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_values(samples: Samples) -> torch.Tensor:
    """Numeric labels -> a float target tensor (N,) for regression; empty or 'nan' -> NaN (masked).

    Raises:
        DataError: a label that is not a number, naming the file or row.
    """
    values = []
    for i, label in enumerate(samples.labels):
        try:
            values.append(float(label) if label not in (None, "") else float("nan"))
        except (TypeError, ValueError):
            where = samples.where.get(i, samples.ids[i])
            raise DataError(f"{where}: label {label!r} is not a number (task.kind is regression)") from None
    return torch.tensor(values, dtype=torch.float32)


def _names(label) -> list:
    return label if isinstance(label, list) else [label]


def encode_labels(samples: Samples, classes: list[str] | None, kind: str) -> tuple[torch.Tensor, list[str], str]:
    """Class names -> a target tensor, checking every label against the class list.

    Args:
        samples: loaded samples with string labels.
        classes: class names in order (None: the source's own, else sorted unique labels).
        kind: "auto", "binary", "multiclass" or "multilabel".

    Returns:
        (targets, classes, kind): binary float (N,), multiclass int64 (N,), multilabel float (N, K).

    Raises:
        DataError: a label that is not one of `classes`, naming the file or row.
    """
    multilabel = any(isinstance(label, list) for label in samples.labels)
    if classes is None:
        names = {n for label in samples.labels for n in _names(label)}
        classes = samples.default_classes or sorted(names)
    if kind == "auto":
        kind = "multilabel" if multilabel else "binary" if len(classes) == 2 else "multiclass"
    index = {name: k for k, name in enumerate(classes)}
    for i, label in enumerate(samples.labels):
        for name in _names(label):
            if name not in index:
                where = samples.where.get(i, samples.ids[i])
                raise DataError(f"{where}: label {name!r} is not one of the classes {classes}")
    if kind == "multilabel":
        targets = torch.zeros(len(samples.labels), len(classes))
        for i, label in enumerate(samples.labels):
            for name in _names(label):
                targets[i, index[name]] = 1.0
        return targets, list(classes), kind
    if multilabel:
        raise DataError(f"some labels list several classes ('a|b'), but task.type is {kind}; use multilabel")
    targets = torch.tensor([index[label] for label in samples.labels])
    return (targets.float() if kind == "binary" else targets.long()), list(classes), kind
