"""Classification labels: class names (or several 0/1 label columns) -> target tensors."""

from __future__ import annotations

import torch

from biomx.data.samples import Samples, label_cells, where_of
from biomx.errors import DataError


def _names(label) -> list:
    return label if isinstance(label, list) else [label]


# Cell values of a multi-task binary column (compared lower-cased and stripped).
_POSITIVE = ("1", "1.0", "true", "yes", "active", "positive")
_NEGATIVE = ("0", "0.0", "false", "no", "inactive", "negative")


def encode_labels(samples: Samples, classes: list[str] | None, kind: str) -> tuple[torch.Tensor, list[str], str]:
    """Class names -> a target tensor, checking every label against the class list.

    Several label columns (`samples.label_columns`, each label a list of cells, ""
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
    columns = samples.label_columns
    if columns is not None and len(columns) > 1:
        return _encode_tasks(samples, list(columns), classes, kind)
    if columns is not None:  # one column: its cells are plain class names, as without a list
        labels = []
        for i in range(len(samples.labels)):
            cell = label_cells(samples, i, columns)[0]
            if cell in (None, "") or (isinstance(cell, str) and not cell.strip()):
                raise DataError(f"{where_of(samples, i)}: column {columns[0]!r}: missing label "
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
                raise DataError(f"{where_of(samples, i)}: label {name!r} is not one of the classes {classes}")
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
        for cell, column in zip(label_cells(samples, i, columns), columns, strict=True):
            key = "" if cell is None else str(cell).strip().lower()
            if key and key not in values:
                raise DataError(f"{where_of(samples, i)}: column {column!r}: label {cell!r} is not "
                                "a binary value (1/0, true/false, yes/no, active/inactive, "
                                "positive/negative; empty = not measured)")
            row.append(values[key] if key else float("nan"))
        rows.append(row)
    targets = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(columns))
    return targets, list(columns), "multilabel"
