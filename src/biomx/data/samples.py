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
    """Numeric labels -> a float target tensor for regression; empty or 'nan' -> NaN (masked).

    With several label columns (`samples.extra["label_columns"]`, each label a list of cells,
    Tox21-style multi-task data) the result is (N, T), one column per label column, NaN where a
    cell is empty (not measured); the regression task leaves those out of the loss and metrics.
    With one label column (or none listed) it is (N,), as for a single target.

    Raises:
        DataError: a label that is not a number, naming the file or row (and the column).
    """
    columns = samples.extra.get("label_columns")
    if columns is None:
        values = [_number(samples, i, label, None) for i, label in enumerate(samples.labels)]
        return torch.tensor(values, dtype=torch.float32)
    rows = [[_number(samples, i, cell, column) for cell, column in zip(_cells(samples, i, columns),
                                                                       columns, strict=True)]
            for i in range(len(samples.labels))]
    targets = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(columns))
    return targets[:, 0] if len(columns) == 1 else targets


def _where(samples: Samples, i: int) -> str:
    return samples.where.get(i, samples.ids[i])


def _cells(samples: Samples, i: int, columns: list[str]) -> list:
    """Sample i's label cells, one per label column (the loader's contract)."""
    label = samples.labels[i]
    cells = label if isinstance(label, (list, tuple)) else [label]
    if len(cells) != len(columns):
        raise DataError(f"{_where(samples, i)}: {len(cells)} label value(s) for the "
                        f"{len(columns)} label columns {columns}")
    return list(cells)


def _number(samples: Samples, i: int, label, column: str | None) -> float:
    """One regression label as float; empty -> NaN."""
    try:
        return float(label) if label not in (None, "") else float("nan")
    except (TypeError, ValueError):
        at = "" if column is None else f" column {column!r}:"
        raise DataError(f"{_where(samples, i)}:{at} label {label!r} is not a number "
                        "(task.kind is regression)") from None


def _names(label) -> list:
    return label if isinstance(label, list) else [label]


# Cell values of a multi-task binary column (compared lower-cased and stripped).
_POSITIVE = ("1", "1.0", "true", "yes", "active", "positive")
_NEGATIVE = ("0", "0.0", "false", "no", "inactive", "negative")


def encode_labels(samples: Samples, classes: list[str] | None, kind: str) -> tuple[torch.Tensor, list[str], str]:
    """Class names -> a target tensor, checking every label against the class list.

    Several label columns (`samples.extra["label_columns"]`, each label a list of cells, ""
    for not measured) make a multi-task binary problem, Tox21-style: kind "multilabel", one
    class per column (classes = the column names), targets (N, T) float with 1, 0 and NaN for a
    missing cell; the classification task leaves NaN out of the loss and of each task's
    metrics. A cell is 1/0, 1.0/0.0, true/false, yes/no, active/inactive or positive/negative
    (any case). One listed label column is today's single-label column: its cells are class
    names (e.g. "0"/"1" -> binary with classes ["0", "1"]), and an empty cell is an error.

    Args:
        samples: loaded samples with string labels.
        classes: class names in order (None: the source's own, else sorted unique labels;
            with several label columns: None or exactly the columns, in order).
        kind: "auto", "binary", "multiclass" or "multilabel".

    Returns:
        (targets, classes, kind): binary float (N,), multiclass int64 (N,), multilabel float (N, K).

    Raises:
        DataError: a label that is not one of `classes` (or not a 0/1 value in a multi-task
            column), naming the file or row and the column; a kind that cannot hold several
            label columns.
    """
    columns = samples.extra.get("label_columns")
    if columns is not None and len(columns) > 1:
        return _encode_tasks(samples, list(columns), classes, kind)
    if columns is not None:  # one column: its cells are plain class names, as without a list
        labels = []
        for i in range(len(samples.labels)):
            cell = _cells(samples, i, columns)[0]
            if cell in (None, "") or (isinstance(cell, str) and not cell.strip()):
                raise DataError(f"{_where(samples, i)}: column {columns[0]!r}: missing label "
                                "(only several label columns may have empty cells)")
            labels.append(cell)
        samples = Samples(inputs=samples.inputs, labels=labels, ids=samples.ids,
                          default_classes=samples.default_classes, where=samples.where)
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
                raise DataError(f"{_where(samples, i)}: label {name!r} is not one of the classes {classes}")
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


def _encode_tasks(samples: Samples, columns: list[str], classes: list[str] | None,
                  kind: str) -> tuple[torch.Tensor, list[str], str]:
    """Several binary label columns -> multilabel targets (N, T): 1, 0, NaN = not measured."""
    if kind not in ("auto", "multilabel"):
        raise DataError(f"{len(columns)} label columns {columns} make a multi-task (multilabel) "
                        f"problem, but task.type is {kind}; use multilabel or auto")
    if classes is not None and list(classes) != columns:
        raise DataError(f"task.classes {list(classes)} must be the label columns {columns} "
                        "(in order) or left out")
    values = {**dict.fromkeys(_POSITIVE, 1.0), **dict.fromkeys(_NEGATIVE, 0.0)}
    rows = []
    for i in range(len(samples.labels)):
        row = []
        for cell, column in zip(_cells(samples, i, columns), columns, strict=True):
            key = "" if cell is None else str(cell).strip().lower()
            if key and key not in values:
                raise DataError(f"{_where(samples, i)}: column {column!r}: label {cell!r} is not "
                                "a binary value (1/0, true/false, yes/no, active/inactive, "
                                "positive/negative; empty = not measured)")
            row.append(values[key] if key else float("nan"))
        rows.append(row)
    targets = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(columns))
    return targets, list(columns), "multilabel"
