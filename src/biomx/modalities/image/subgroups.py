"""Image columns to group the test split by (`eval.subgroups`, `protocols.SubgroupModality`).

- every column of a CSV manifest (source csv) but the path column: site, scanner, sex, age...;
- `mean_intensity`, every source: the image's mean pixel value, binned by `biomx.fairness` into
  quartiles. A documented proxy for acquisition (exposure, scanner, processing) where a dataset
  has no metadata (PneumoniaMNIST); not a demographic;
- `PatientSex` and `PatientAge` from DICOM headers, only when listed in eval.subgroups (age in
  years, binned by decade; never written out per sample).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.errors import DataError

HEADER_FIELDS = ("PatientSex", "PatientAge")
AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def subgroup_table(cfg: ExperimentConfig, samples: Samples, requested: list[str]) -> dict[str, Any]:
    """Column -> one value per sample: manifest columns, mean intensity, requested header fields."""
    table: dict[str, Any] = {"mean_intensity": mean_intensity(samples.inputs)}
    if cfg.data.source == "csv":
        table.update(_manifest(Path(cfg.data.path), cfg.data.image.path_column, samples.ids))
    wanted = [f for f in HEADER_FIELDS if f in requested or f"{f}_group" in requested]
    if wanted:
        table.update(_headers(samples.ids, wanted))
    return table


def mean_intensity(images: Any) -> np.ndarray:
    """Each image's mean pixel value (the tensor's own scale), in chunks to bound memory."""
    return np.concatenate([chunk.float().mean(dim=tuple(range(1, chunk.dim()))).numpy()
                           for chunk in images.split(4096)]) if len(images) else np.zeros(0)  # fmt: skip


def _manifest(path: Path, path_column: str, ids: list[str]) -> dict[str, list[str]]:
    """The manifest's other columns, in the order of the loaded samples (matched by file path)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {' '.join(str(e).split())}") from e
    by_path = {str(path.parent / (row.get(path_column) or "").strip()): row for row in rows}
    names = [c for c in (rows[0].keys() if rows else []) if c != path_column]
    return {name: [(by_path.get(i) or {}).get(name) or "" for i in ids] for name in names}


def _age_years(value: str) -> float:
    """A DICOM age string ("045Y", "006M") in years; NaN when absent or malformed."""
    value = value.strip()
    if len(value) >= 2 and value[:-1].isdigit() and value[-1].upper() in AGE_UNITS:
        return int(value[:-1]) * AGE_UNITS[value[-1].upper()]
    return float("nan")


def _headers(ids: list[str], fields: list[str]) -> dict[str, list[Any]]:
    """Header fields of each sample's file (a file without them, or not a DICOM file: missing)."""
    import pydicom

    out: dict[str, list[Any]] = {f: [] for f in fields}
    for name in ids:
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, specific_tags=list(fields))
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):  # not DICOM, unreadable: "missing"
            ds = None
        for f in fields:
            raw = str(getattr(ds, f, "") or "") if ds is not None else ""
            out[f].append(_age_years(raw) if f == "PatientAge" else raw.strip())
    return out
