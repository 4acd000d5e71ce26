"""Report sections for a history run: how the visits were encoded, and which measured variables
the model leans on (occlusion: each variable removed from every visit of the test patients)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.config import ExperimentConfig
from biomx.modalities.history.encode import step_size
from biomx.protocols import Task, TestView

MAX_ROWS = 2000  # test patients the occlusion averages over at most


def encoding_section(record: Any, pre: dict[str, Any], train: np.ndarray) -> dict:
    """One row per variable: how often it was measured at the training patients' visits, its
    training mean and sd; the text gives the landmark and the visits per patient."""
    visits = np.array([len(t) for t in record.times])
    stacked = np.concatenate([record.values[i] for i in train]) if len(train) else np.zeros((0, len(pre["variables"])))
    rows = []
    for k, v in enumerate(pre["variables"]):
        measured = float((~np.isnan(stacked[:, k])).mean()) if len(stacked) else 0.0
        rows.append([v["name"], f"{measured:.1%}", f"{v['mean']:.4g}", f"{v['std']:.4g}"])
    landmark = pre["settings"].get("landmark")
    text = (f"Visits per patient: median {np.median(visits):g}, at most {visits.max()} (the model reads the "
            f"{pre['max_visits']} most recent). "
            + (f"Landmark {landmark:g}: visits after it are never read. " if landmark is not None else "")
            + "Values are standardised with the training mean and sd; an unmeasured value carries the last "
            "measured one forward, with a 0/1 measured-at-this-visit indicator.")  # fmt: skip
    return {"title": "History encoding (fitted on the training patients)", "text": text,
            "table": {"header": ["variable", "measured at train visits", "mean", "sd"], "rows": rows}}  # fmt: skip


def occlusion_section(model: nn.Module, test: TestView, pre: dict[str, Any]) -> dict | None:
    """Mean |change| of the model's outputs when one variable is removed from every visit (as if
    never measured), per variable, and when the visit times are removed."""
    data = test.data
    rows = torch.as_tensor(np.asarray(data.index)[:MAX_ROWS], dtype=torch.long)
    if len(rows) == 0:
        return None
    x = data.x[rows].clone()
    n_var = len(pre["variables"])
    n_static = x.shape[1] - pre["max_visits"] * step_size(n_var)
    device = next(model.parameters()).device
    model.eval()

    def outputs(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(inputs.to(device)).float().cpu()

    reference = outputs(x)
    scores = []
    targets = [(v["name"], [k, n_var + k]) for k, v in enumerate(pre["variables"])]
    targets.append(("visit times (since first, gaps)", [2 * n_var, 2 * n_var + 1]))
    for name, columns in targets:
        occluded = x.clone()
        steps = occluded[:, n_static:].view(len(x), pre["max_visits"], -1)
        steps[:, :, columns] = 0.0
        scores.append((name, float((outputs(occluded) - reference).abs().mean())))
    scores.sort(key=lambda item: -item[1])
    return {"title": "Variable importance (occlusion on the test patients)",
            "text": "Mean absolute change of the model's outputs when a variable is removed from every visit "
            "(values and indicators zeroed, as if never measured); larger = the model leans on it more.",
            "table": {"header": ["variable", "mean |change| of the output"],
                      "rows": [[name, f"{score:.4g}"] for name, score in scores]}}  # fmt: skip


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    pre = {"variables": test.data.variables, "max_visits": test.data.max_visits,
           "settings": cfg.data.history.model_dump()}  # fmt: skip
    sections = [encoding_section(test.samples.inputs, pre, test.splits["train"])]
    section = occlusion_section(model, test, pre)
    return sections + ([section] if section else [])
