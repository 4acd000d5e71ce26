"""A history run's exported graph input: the encoded row itself, so the graph's `prepare` is the
identity.

Why not raw visits: a visit's values are forward-filled over the patient's WHOLE history and
only then cut to the most recent `max_visits` visits, with times counted from the first visit
ever, so the encoding needs the full, variable-length history - not one fixed-shape tensor. The
join with the baseline table and the landmark cut are table operations too. All of it stays
outside; the sidecar's `example` states the layout and every statistic a client needs to encode
a patient (see `history.encode` for the same steps in Python).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.data.samples import Samples
from biomx.modalities.common.table_encoding import encoded_names
from biomx.modalities.history.encode import step_size
from biomx.modalities.history.pipeline import HistoryRecord, _matrix, read_inputs
from biomx.protocols import ExportPlan, GraphInput


def layout(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The encoded row's parts, for a client that encodes patients itself."""
    encoding = preprocessing["encoding"]
    variables = [v["name"] for v in preprocessing["variables"]]
    per_visit = ([f"{v} (standardised, carried forward; 0 before its first measurement)" for v in variables]
                 + [f"{v} measured at this visit (0/1)" for v in variables]
                 + ["time since the first visit / time_scale", "time since the previous visit / time_scale",
                    "1 for a real visit (0 = padding)"])  # fmt: skip
    return {
        "static": encoded_names(encoding)[0],  # the tabular encoding of the baseline covariates
        "static_encoding": encoding,
        "variables": preprocessing["variables"],  # name, mean, std of each history variable
        "max_visits": preprocessing["max_visits"],
        "time_scale": preprocessing["time_scale"],
        "landmark": preprocessing["settings"].get("landmark"),
        "per_visit": per_visit,
        "visits": "left-aligned, the most recent max_visits visits (values carried forward over the whole history)",
    }


def width(preprocessing: dict[str, Any]) -> int:
    static = len(encoded_names(preprocessing["encoding"])[0])
    return static + preprocessing["max_visits"] * step_size(len(preprocessing["variables"]))


def export_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """The encoded row in, nothing more to do inside (see the module docstring)."""
    n, static = width(preprocessing), len(encoded_names(preprocessing["encoding"])[0])
    step, visits = step_size(len(preprocessing["variables"])), preprocessing["max_visits"]
    description = (f"float32 (batch, {n}): one patient per row, already encoded as biomx encodes it: the {static} "
                   f"encoded baseline covariates (example.static, from example.static_encoding), then {visits} visits "
                   f"x {step} values (example.per_visit), flattened visit by visit")  # fmt: skip
    return ExportPlan(
        prepare=nn.Identity(),
        input=GraphInput(name="features", dtype="float32", shape=["batch", n], description=description),
        outside="joining each patient's history to the run's baseline table, the landmark cut and the whole "
                "encoding (covariates, forward-filled standardised visits, indicators, times): a history is "
                "forward-filled over all its visits before the most recent are kept, which no fixed-shape "
                "graph input can express",
        inside=["none: the encoded row goes to the model as it is"],
        example=layout(preprocessing),
    )  # fmt: skip


def read_raw(preprocessing: dict[str, Any], inputs: list[str | Path],
             skip_errors: bool = False) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """History tables -> the encoded rows (what `read_inputs` gives: the graph input is encoded)."""
    return read_inputs(preprocessing, inputs, skip_errors)


def raw_rows(preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
    """The encoded rows of the run's patients at `index`."""
    record: HistoryRecord = samples.inputs
    rows = np.asarray(index, dtype=np.int64)
    picked = HistoryRecord(record.variables, [record.times[i] for i in rows], [record.values[i] for i in rows],
                           record.rows[rows], record.baseline)  # fmt: skip
    return torch.from_numpy(_matrix(picked, preprocessing["encoding"], preprocessing))
