"""A clinical table parsed for an experiment: typed feature columns, labels, ids, patient groups,
predefined split names; cached on disk by content (numbers and codes only, never pickle).

What is expensive on a large table is reading the text and parsing every cell (and inferring
the types); that is what the cache keeps, keyed by the file's sha256 and every setting that
changes the result. The encoding fitted on the training split is cheap (a few vectorised
passes) and depends on the split, so it is fitted again on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomx.config import DataConfig
from biomx.data.cache import ArrayCache, cache_key, default_cache_dir
from biomx.data.samples import sha256_file
from biomx.errors import DataError
from biomx.modalities.common.table_encoding import check_labels, column_types, parse_column
from biomx.modalities.common.table_readers import Table, no_gc, read_table, text_cells

CACHE_VERSION = 1  # bump when what is cached changes: old entries become misses


@dataclass
class ParsedTable:
    """The typed columns of a table (numbers: float, NaN = missing; categoricals: text, "" = missing)."""

    path: str
    first_row: int
    types: dict[str, str]  # feature column -> numeric / boolean / categorical
    values: dict[str, np.ndarray]
    labels: list
    ids: list[str]
    groups: list[str] | None = None
    split_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def where(self, i: int) -> str:
        return f"{self.path} row {i + self.first_row}"


def label_columns(cfg: DataConfig) -> list[str]:
    return list(cfg.label_column) if isinstance(cfg.label_column, list) else [cfg.label_column]


def _features(table: Table, cfg: DataConfig, used: list[str]) -> list[str]:
    t = cfg.tabular
    for name in [*t.columns, *t.exclude]:
        table.column(name, "data.tabular.columns" if name in t.columns else "data.tabular.exclude")
    if t.features is not None:
        for name in t.features:
            table.column(name, "data.tabular.features")
            if name in used:
                raise DataError(f"{table.path}: column {name!r} is a label, id, group or split column; "
                                "it cannot also be a feature (data.tabular.features)")  # fmt: skip
        return list(t.features)
    features = [c for c in table.names if c not in used and c not in t.exclude]
    if not features:
        raise DataError(f"{table.path}: no feature columns (every column is a label, id, group or excluded)")
    return features


def parse(cfg: DataConfig) -> ParsedTable:
    """Read and type the table named by `cfg` (DataError, one line, for anything wrong in it)."""
    table = read_table(cfg.path, cfg.source)
    t, labels = cfg.tabular, label_columns(cfg)
    for name in labels:
        table.column(name, "data.label_column")
    used = list(labels)
    if t.id_column:
        used.append(t.id_column)
        ids = text_cells(table.column(t.id_column, "data.tabular.id_column")).tolist()
    else:
        ids = [table.where(i) for i in range(len(table))]
    groups = None
    if cfg.group_column in table.columns:  # the shared key; its default (patient_id) may be absent
        used.append(cfg.group_column)
        groups = text_cells(table.columns[cfg.group_column]).tolist()
    elif cfg.split.method == "group":
        table.column(cfg.group_column, "data.group_column, for data.split.method: group")
    split_names = None
    if cfg.split.method == "predefined":
        used.append(cfg.split.column)
        split_names = text_cells(table.column(cfg.split.column, "data.split.column")).tolist()
    features = _features(table, cfg, used)
    types = column_types(table, features, t.columns, t.max_inferred_levels)
    values = {name: parse_column(table, name, kind) for name, kind in types.items()}
    return ParsedTable(str(table.path), table.first_row, types, values,
                       check_labels(table, labels, t.missing_labels == "keep"), ids, groups, split_names)  # fmt: skip


# ---------------------------------------------------------------------------------- the cache


def _settings(cfg: DataConfig) -> dict[str, Any]:
    t = cfg.tabular
    return {"version": CACHE_VERSION, "source": cfg.source, "labels": label_columns(cfg),
            "group": cfg.group_column, "split": cfg.split.column if cfg.split.method == "predefined" else None,
            "group_needed": cfg.split.method == "group", "columns": t.columns, "features": t.features,
            "exclude": t.exclude, "id": t.id_column, "levels": t.max_inferred_levels,
            "missing_labels": t.missing_labels}  # fmt: skip


def _codes(text: list[str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Text as int32 codes and its vocabulary (the cache holds numbers only)."""
    vocab, codes = np.unique(np.asarray(text, dtype=str), return_inverse=True)
    return codes.astype(np.int32), vocab.tolist()


def _to_cache(parsed: ParsedTable) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays, vocabs = {}, {}
    for k, (name, kind) in enumerate(parsed.types.items()):
        if kind == "categorical":
            arrays[f"f{k}"], vocabs[f"f{k}"] = _codes(parsed.values[name])
        else:
            arrays[f"f{k}"] = parsed.values[name]
    rows = [label if isinstance(label, list) else [label] for label in parsed.labels]
    for j in range(len(rows[0]) if rows else 0):
        arrays[f"label{j}"], vocabs[f"label{j}"] = _codes([r[j] for r in rows])
    for name in ("ids", "groups", "split_names"):
        if getattr(parsed, name) is not None:
            arrays[name], vocabs[name] = _codes(getattr(parsed, name))
    meta = {"path": parsed.path, "first_row": parsed.first_row, "types": list(parsed.types.items()),
            "vocabs": vocabs, "several_labels": bool(parsed.labels) and isinstance(parsed.labels[0], list)}  # fmt: skip
    return arrays, meta


def _from_cache(arrays: dict[str, np.ndarray], meta: dict[str, Any], path: str) -> ParsedTable:
    vocabs = meta["vocabs"]

    def text(name: str) -> np.ndarray:
        return np.asarray(vocabs[name], dtype=object)[np.asarray(arrays[name])]

    types = dict(meta["types"])
    values = {name: text(f"f{k}") if kind == "categorical" else np.array(arrays[f"f{k}"])
              for k, (name, kind) in enumerate(types.items())}  # fmt: skip
    columns = [text(f"label{j}").tolist() for j in range(sum(1 for a in arrays if a.startswith("label")))]
    with no_gc():
        labels = [list(r) for r in zip(*columns, strict=True)] if meta["several_labels"] else columns[0]
    optional = {n: text(n).tolist() if n in arrays else None for n in ("groups", "split_names")}
    return ParsedTable(path, meta["first_row"], types, values, labels, text("ids").tolist(), **optional)


def load_parsed(cfg: DataConfig) -> tuple[ParsedTable, str]:
    """The parsed table (from the cache when this file and these settings were parsed before) and
    the file's sha256."""
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    digest = sha256_file(path)
    t = cfg.tabular
    cache = ArrayCache(Path(t.cache_dir) if t.cache_dir else default_cache_dir()) if t.cache else None
    key = cache_key("tabular", digest, _settings(cfg))
    if cache is not None:
        hit, meta = cache.get(key), cache.get_meta(key)
        if hit is not None and meta is not None:
            parsed = _from_cache(hit, meta, str(path))
            parsed.meta["cached"] = True
            return parsed, digest
    parsed = parse(cfg)
    if cache is not None:
        try:
            cache.put(key, *_to_cache(parsed))
        except OSError:
            pass  # an unwritable cache folder: the table is parsed all the same
    return parsed, digest
