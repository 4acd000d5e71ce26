"""The history modality in an experiment: the history and baseline tables -> per-patient visits
(cut at the landmark) and covariates -> encodings fitted on the training patients -> one float
matrix per split; and the same for `biomx predict`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples, sha256_file
from biomx.data.splits import row_digests
from biomx.errors import DataError
from biomx.modalities.common.table_encoding import fit, model_inputs, parse_column, transform
from biomx.modalities.common.tensor_dataset import RowTensorDataset
from biomx.modalities.history.config import HistorySettings
from biomx.modalities.history.encode import encode_all, fit_variables, landmarked
from biomx.modalities.history.tables import Baseline, read_baseline, read_histories


@dataclass
class HistoryRecord:
    """What `load` hands on: the kept patients' visits (already cut at the landmark), their
    baseline rows and covariates."""

    variables: list[str]
    times: list[np.ndarray]
    values: list[np.ndarray]
    rows: np.ndarray  # each kept patient's row in the baseline table
    baseline: Baseline


def label_columns(cfg: Any) -> list[str]:
    """data.label_column as a list (survival: [time, event])."""
    return list(cfg.label_column) if isinstance(cfg.label_column, list) else [cfg.label_column]


def _at_risk(baseline: Baseline, labels: list[str], column: str, landmark: float) -> tuple[np.ndarray, list]:
    """(rows of patients whose event time is after the landmark, their labels with that time
    counted from the landmark)."""
    if column not in labels:
        raise DataError(f"data.history.at_risk_column: {column!r} is not one of data.label_column {labels}")
    k = labels.index(column)
    times = parse_column(baseline.table, column, "numeric")
    keep = np.flatnonzero(times > landmark)
    if len(keep) == 0:
        raise DataError(f"{baseline.path}: no patient is still at risk at the landmark {landmark:g} (column {column!r})")
    out = []
    for i in keep:
        shifted = f"{times[i] - landmark:.10g}"
        out.append([*baseline.labels[i][:k], shifted, *baseline.labels[i][k + 1 :]] if len(labels) > 1 else shifted)
    return keep, out


def load(cfg: ExperimentConfig) -> Samples:
    """Read both tables, join them on the patient id, cut the visits at the landmark."""
    d, s = cfg.data, cfg.data.history
    labels = label_columns(d)
    baseline = read_baseline(s.baseline, s, labels, d.group_column)
    histories, variables = read_histories(d.path, s, baseline.rows, baseline.path, source=d.source)
    rows = np.arange(len(baseline.ids))
    kept_labels = baseline.labels
    if s.landmark is not None and s.at_risk_column:
        rows, kept_labels = _at_risk(baseline, labels, s.at_risk_column, s.landmark)
    empty = (np.zeros(0), np.zeros((0, len(variables))))
    cut = [landmarked(*histories.get(baseline.ids[i], empty), s.landmark) for i in rows]
    record = HistoryRecord(variables, [c[0] for c in cut], [c[1] for c in cut], rows, baseline)
    groups = None
    if d.group_column in baseline.table.columns:
        groups = np.array([str(baseline.table.columns[d.group_column][i]) for i in rows], dtype=object)
    return Samples(
        inputs=record,
        labels=kept_labels,
        ids=[baseline.ids[i] for i in rows],
        groups=groups,
        source_sha256=sha256_file(d.path),
        where={k: baseline.table.where(int(i)) for k, i in enumerate(rows)},
        label_columns=labels if len(labels) > 1 else None,
    )


def sample_digests(samples: Samples) -> list[str] | None:
    """A hash per patient of its (cut) visits and covariates, for the duplicates check."""
    record: HistoryRecord = samples.inputs
    rows = []
    for k, i in enumerate(record.rows):
        static = [str(record.baseline.values[c][i]) for c in record.baseline.types]
        rows.append(np.frombuffer(("|".join(static) + repr(record.times[k].tolist()) +
                                   repr(record.values[k].tolist())).encode(), dtype=np.uint8))  # fmt: skip
    width = max((len(r) for r in rows), default=0)
    padded = np.zeros((len(rows), width), np.uint8)
    for k, r in enumerate(rows):
        padded[k, : len(r)] = r
    return row_digests(padded)


class HistoryDataset(RowTensorDataset):
    """The encoded histories (one flat row per patient), with their variables and visit count
    (for the explanations)."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, index: np.ndarray,
                 variables: list[dict[str, Any]] | None = None, max_visits: int = 1) -> None:  # fmt: skip
        super().__init__(x, targets, index)
        self.variables, self.max_visits = variables or [], max_visits


def _matrix(record: HistoryRecord, static: dict[str, Any], pre: dict[str, Any]) -> np.ndarray:
    values = {c: record.baseline.values[c][record.rows] for c in pre["types"]}
    x_static = transform(values, static)
    x_seq = encode_all(record.times, record.values, pre["variables"], pre["max_visits"], pre["time_scale"])
    return np.concatenate([x_static, x_seq], axis=1)


def build_datasets(samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray],
                   cfg: ExperimentConfig) -> tuple[dict[str, HistoryDataset], dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Covariate encoding and per-variable standardisation fitted on the training patients only."""
    record: HistoryRecord = samples.inputs
    s = cfg.data.history
    train = splits["train"]
    types = record.baseline.types
    static = fit({c: record.baseline.values[c][record.rows] for c in types}, types, train, s.max_levels)
    longest = max((len(t) for t in record.times), default=1)
    pre = {"modality": "history", "types": types, "encoding": static, "settings": s.model_dump(),
           "variables": fit_variables(record.values, train, record.variables),
           "max_visits": max(1, min(s.max_visits, longest)), "time_scale": s.time_scale,
           "baseline": str(s.baseline), "label_columns": label_columns(cfg.data)}  # fmt: skip
    x = torch.from_numpy(_matrix(record, static, pre))
    datasets = {name: HistoryDataset(x, targets, idx, pre["variables"], pre["max_visits"]) for name, idx in splits.items()}
    inputs = model_inputs(static) | {"n_variables": len(record.variables), "max_visits": pre["max_visits"]}
    return datasets, pre, inputs


def inference_model(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    return model


def read_inputs(preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
                ) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """History tables of new patients (the run's layout and variables; others ignored); their
    covariates from the run's baseline table (`data.history.baseline`), joined on the id. Every
    patient of the history table is predicted, cut at the run's landmark. A bad row is refused
    even with `skip_errors`: leaving one visit out would silently change a patient's history."""

    s = HistorySettings(**preprocessing["settings"])
    baseline = read_baseline(preprocessing["baseline"], s, [], None, need_labels=False)
    for name in preprocessing["types"]:
        baseline.table.column(name, "a baseline covariate of the run")
    names = [v["name"] for v in preprocessing["variables"]]
    matrices, ids = [], []
    for item in inputs:
        histories, _ = read_histories(item, s, baseline.rows, baseline.path, names)
        patients = sorted(histories)
        cut = [landmarked(*histories[p], s.landmark) for p in patients]
        rows = np.array([baseline.rows[p] for p in patients], dtype=np.int64)
        record = HistoryRecord(names, [c[0] for c in cut], [c[1] for c in cut], rows, baseline)
        matrices.append(_matrix(record, preprocessing["encoding"], preprocessing))
        ids += patients
    return torch.from_numpy(np.concatenate(matrices)), ids, []
