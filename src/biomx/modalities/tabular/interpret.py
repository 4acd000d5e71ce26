"""Per-column attributions: integrated gradients (Captum) in each model's continuous input space.

A tabular zoo model splits into `embed(x) -> z` (one block of z per encoded column: a number, a
missingness indicator, a categorical's embedding or one-hot vector) and `head(z)`. Integrated
gradients are taken in z, from a baseline patient (every number at its training mean, no
indicator set, every categorical at its most frequent training level) to the patient, so
categoricals get attributions too. Each block is summed to its encoded column, and the encoded
columns (a number and its missingness indicator) are summed back to the table's column.
A model without `embed`/`head` (a plug-in) is attributed in x directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.protocols import Task, TestView

N_STEPS = 32
INTERNAL_BATCH = 2048  # interpolated rows per forward pass (an FT-Transformer's attention is N x F^2)
MAX_GLOBAL_ROWS = 1000  # test rows the global importance averages over at most
TOP_FEATURES = 5  # per patient
TOP_PLOTTED = 20


def baseline_row(x_train: torch.Tensor, n_continuous: int) -> torch.Tensor:
    """(1, F): zeros for the standardised numbers and indicators, each categorical's mode in train."""
    base = torch.zeros(1, x_train.shape[1], dtype=x_train.dtype)
    for j in range(n_continuous, x_train.shape[1]):
        values, counts = torch.unique(x_train[:, j], return_counts=True)
        base[0, j] = values[counts.argmax()] if len(values) else 0
    return base


def attributions(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target: Any, n_encoded: int
                 ) -> torch.Tensor:  # fmt: skip
    """(N, n_encoded) integrated gradients of output column `target` (None: the first, e.g. a
    binary model's one logit)."""
    from captum.attr import IntegratedGradients

    device = next(model.parameters()).device
    x, baseline = x.to(device), baseline.to(device).expand_as(x)
    target = 0 if target is None else target.to(device) if isinstance(target, torch.Tensor) else target
    with torch.enable_grad():
        if hasattr(model, "embed") and hasattr(model, "head"):
            with torch.no_grad():
                z, zb = model.embed(x), model.embed(baseline)
            attr = IntegratedGradients(model.head).attribute(z, zb, target=target, n_steps=N_STEPS,
                                                           internal_batch_size=INTERNAL_BATCH)
            blocks = [attr[:, a:b].sum(dim=1) for a, b in model.feature_slices]
            return torch.stack(blocks, dim=1).detach().float().cpu()
        attr = IntegratedGradients(model).attribute(x, baseline, target=target, n_steps=N_STEPS,
                                                       internal_batch_size=INTERNAL_BATCH)
        return attr.detach().float().cpu()[:, :n_encoded]


def sum_to_columns(attr: np.ndarray, encoded_columns: list[str]) -> tuple[np.ndarray, list[str]]:
    """(N, C) attributions per table column (indicators and levels summed in), the columns."""
    columns = list(dict.fromkeys(encoded_columns))
    where = {c: k for k, c in enumerate(columns)}
    out = np.zeros((attr.shape[0], len(columns)), dtype=np.float64)
    for j, column in enumerate(encoded_columns):
        out[:, where[column]] += attr[:, j]
    return out, columns


def _cell(values: dict[str, np.ndarray], types: dict[str, str], column: str, row: int) -> str:
    v = values[column][row]
    if isinstance(v, str):
        return v or "missing"
    if np.isnan(v):
        return "missing"
    return ("true" if v else "false") if types.get(column) == "boolean" else f"{v:.4g}"


def _figure(importance: np.ndarray, columns: list[str]) -> Any:
    from matplotlib.figure import Figure

    order = np.argsort(-importance)[:TOP_PLOTTED][::-1]
    fig = Figure(figsize=(6, 0.3 * len(order) + 1))
    ax = fig.subplots()
    ax.barh([columns[k] for k in order], importance[order], color="#4477aa")
    ax.set_xlabel("mean |attribution| over test patients")
    fig.tight_layout()
    return fig


def explanation_sections(model: nn.Module, task: Task, test: TestView, n: int, encoded_columns: list[str],
                         n_continuous: int) -> list[dict]:  # fmt: skip
    """The global importance section and the per-patient section."""
    data, index = test.data, test.index
    if not len(index):
        return []
    model = model.eval()
    x_test = data.x[torch.as_tensor(index)]
    base = baseline_row(data.x[torch.as_tensor(test.splits["train"])], n_continuous)
    n_encoded = len(encoded_columns)
    _, target = task.attribution_target(test.predictions) if hasattr(task, "attribution_target") else (None, None)
    rows = np.arange(min(len(index), MAX_GLOBAL_ROWS))
    if isinstance(target, torch.Tensor):
        target = target[: len(rows)]
    attr = attributions(model, x_test[rows], base, target, n_encoded).numpy()
    per_column, columns = sum_to_columns(attr, encoded_columns)
    importance = np.abs(per_column).mean(axis=0)
    what, _ = task.attribution_text() if hasattr(task, "attribution_text") else ("the model's output", "")
    order = np.argsort(-importance)
    sections = [{"title": "Feature importance (integrated gradients)",
                 "text": f"Mean |integrated gradients| of {what} per table column over {len(rows)} test patients, "
                 "from a baseline patient (training means, no missing value, most frequent levels); a column's "
                 "missingness indicator and categorical levels are summed into it.",
                 "figures": [_figure(importance, columns)],
                 "table": {"header": ["column", "mean |attribution|"],
                           "rows": [[columns[k], f"{importance[k]:.4f}"] for k in order]},
                 "json": {columns[k]: float(importance[k]) for k in order}}]  # fmt: skip
    if n > 0 and hasattr(task, "pick_explained"):
        sections.append(_patients(model, task, test, n, encoded_columns, base, x_test))
    return sections


def _patients(model: nn.Module, task: Any, test: TestView, n: int, encoded_columns: list[str],
              base: torch.Tensor, x_test: torch.Tensor) -> dict:  # fmt: skip
    values, types = test.samples.inputs.values, test.samples.inputs.types
    picked = task.pick_explained(test.predictions, test.targets, n)
    rows, found = [], []
    for row, group, column in picked:
        attr = attributions(model, x_test[row : row + 1], base, column if task.out_dim > 1 else None,
                            len(encoded_columns)).numpy()  # fmt: skip
        per_column, columns = sum_to_columns(attr, encoded_columns)
        caption, value, truth, output = task.describe(column, test.predictions[row], test.targets[row])
        top = np.argsort(-np.abs(per_column[0]))[:TOP_FEATURES]
        sample = int(test.index[row])
        shown = [f"{columns[k]} = {_cell(values, types, columns[k], sample)} ({per_column[0, k]:+.3f})" for k in top]
        rows.append([test.samples.ids[sample], group, caption, "; ".join(shown)])
        found.append({"id": test.samples.ids[sample], "group": group, "prediction": value, "truth": truth,
                      "output": output, "top": [{"column": columns[k], "value": _cell(values, types, columns[k], sample),
                                                 "attribution": float(per_column[0, k])} for k in top]})  # fmt: skip
    return {"title": "Patients explained (integrated gradients)",
            "text": f"Top {TOP_FEATURES} columns of each patient by |attribution| of the explained output, with "
            "the patient's value (as in the table) and the signed attribution (+ pushes the output up).",
            "table": {"header": ["patient", "picked as", "prediction", "top columns: value (attribution)"],
                      "rows": rows}, "json": found}  # fmt: skip
