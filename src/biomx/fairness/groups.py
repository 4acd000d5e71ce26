"""Which subgroup each sample is in, for every column named in `eval.subgroups`.

The modality offers the columns (`protocols.SubgroupModality.subgroup_table`: manifest or table
columns, header fields); this module turns each into group labels, the same way for every
modality:

- text (or a number column with at most `MAX_LEVELS` distinct values): each value is a group;
- numbers with more distinct values are binned, never kept raw: an age column (`age`, or a name
  starting or ending with "age", e.g. `PatientAge`) by decade ("60-69"), any other by quartile
  of the loaded samples ("Q2 [51.2, 63.8)");
- `<name>_group` for a column `<name>` that the modality offers: `<name>`, binned as above (e.g.
  `age_group` from `age`);
- an empty cell (or NaN) is the group "missing".

A requested column the modality does not offer is a ConfigError naming it and the columns it
does offer, raised by `check_subgroups` before training starts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biomx.errors import ConfigError
from biomx.protocols import SubgroupModality

MAX_LEVELS = 10  # a number column with more distinct values is binned
MISSING = "missing"
GROUP_SUFFIX = "_group"


def offered(cfg: Any, modality: Any, samples: Any, requested: list[str]) -> dict[str, Any]:
    """The columns the modality offers for grouping (none when it has no `subgroup_table`)."""
    if not isinstance(modality, SubgroupModality):
        return {}
    return modality.subgroup_table(cfg, samples, list(requested))


def _source_column(name: str, table: dict[str, Any]) -> str | None:
    if name in table:
        return name
    if name.endswith(GROUP_SUFFIX) and name[: -len(GROUP_SUFFIX)] in table:
        return name[: -len(GROUP_SUFFIX)]
    return None


def subgroup_labels(cfg: Any, modality: Any, samples: Any) -> dict[str, np.ndarray]:
    """Column name (as requested) -> one group label per sample (str); ConfigError (one line) for
    a column the modality does not offer."""
    requested = list(cfg.eval.subgroups)
    if not requested:
        return {}
    table = offered(cfg, modality, samples, requested)
    labels = {}
    for name in requested:
        source = _source_column(name, table)
        if source is None:
            available = ", ".join(sorted(table)) or "none"
            raise ConfigError(f"eval.subgroups: no column {name!r} in this data (the {modality.name} modality "
                              f"offers: {available})")  # fmt: skip
        values = np.asarray(table[source], dtype=object)
        if len(values) != len(samples.ids):
            raise ConfigError(f"eval.subgroups: column {name!r} has {len(values)} values for {len(samples.ids)} samples")
        labels[name] = bin_values(values, source, force=name != source)
    return labels


def check_subgroups(cfg: Any, modality: Any, samples: Any) -> None:
    """Refuse, before training, a requested column that is not there (one line naming it)."""
    subgroup_labels(cfg, modality, samples)


def _cells(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stripped text of each cell, missing mask: empty, None or NaN)."""
    text = np.char.strip(np.asarray(values, dtype=str))
    return text, (text == "") | (text == "None") | (np.char.lower(text) == "nan")


def _numbers(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(float values, missing mask) when every present cell is a number, else None."""
    text, missing = _cells(values)
    try:
        x = np.where(missing, "nan", text).astype(np.float64)
    except ValueError:
        return None
    return x, missing | np.isnan(x)


def is_age(column: str) -> bool:
    """An age column is binned by decade: `age`, or a name starting or ending with it."""
    name = column.lower()
    return name.startswith("age") or name.endswith("age")


def _text(values: np.ndarray) -> np.ndarray:
    text, missing = _cells(values)
    return np.where(missing, MISSING, text).astype(object)


def _level(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"


def bin_values(values: np.ndarray, column: str, force: bool = False) -> np.ndarray:
    """Group labels (str) for one column's values: categories, decades or quartiles (see above)."""
    parsed = _numbers(values)
    if parsed is None:
        return _text(values)
    x, missing = parsed
    present = x[~missing]
    if not force and len(np.unique(present)) <= MAX_LEVELS:
        levels, which = np.unique(np.where(missing, 0.0, x), return_inverse=True)
        return np.where(missing, MISSING, np.array([_level(v) for v in levels], dtype=object)[which]).astype(object)
    labels = np.full(len(x), MISSING, dtype=object)
    if not len(present):
        return labels
    if is_age(column):
        decades, which = np.unique((np.floor(present / 10) * 10).astype(int), return_inverse=True)
        labels[~missing] = np.array([f"{d}-{d + 9}" for d in decades], dtype=object)[which]
        return labels
    edges = np.unique(np.quantile(present, [0.25, 0.5, 0.75]))
    bins = np.searchsorted(edges, x[~missing], side="right")
    bounds = [present.min(), *edges, present.max()]
    names = [f"Q{k + 1} [{bounds[k]:.4g}, {bounds[k + 1]:.4g}{']' if k == len(edges) else ')'}"
             for k in range(len(edges) + 1)]  # fmt: skip
    labels[~missing] = np.array(names, dtype=object)[bins]
    return labels


def group_order(labels: np.ndarray) -> list[str]:
    """Groups in a stable order: decades and quartiles ascending, text alphabetically, missing last."""
    names = sorted({str(v) for v in labels} - {MISSING}, key=_sort_key)
    return names + ([MISSING] if MISSING in set(labels.tolist()) else [])


def _sort_key(name: str) -> tuple[int, float, str]:
    head = name.split("-")[0].split(" ")[0].lstrip("Q")
    try:
        return 0, float(head), name
    except ValueError:
        return 1, 0.0, name
