"""The history modality's attribution methods for the explanation checks: per patient, one score per
measured variable at each visit, one for each visit's times, and one per numeric static covariate.

Occlusion (as the report's variable importance, per patient and visit): a variable's value and
indicator at one visit zeroed (as if never measured), or a numeric covariate set to 0 (its training
mean), and the change of the explained output recorded. Integrated gradients (Captum) from the
all-zero input (the level indices kept), summed over the same columns. Categorical covariates are read as level indices,
which have no gradient: both methods leave them out.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import IntegratedGradients
from torch import Tensor, nn

from biomx.config import ExperimentConfig
from biomx.explain.sanity import learns
from biomx.modalities.history.encode import step_size
from biomx.protocols import TestView

IG_STEPS = 32


def variable_groups(n_columns: int, n_var: int, max_visits: int, n_numeric: int) -> Tensor:
    """(n_columns,) group of each input column, -1 where left out: the `n_numeric` numeric static
    columns one each (the categorical codes after them: -1), then per visit each variable (value and
    indicator) and the visit's times."""
    n_static = n_columns - max_visits * step_size(n_var)
    static = torch.full((n_static,), -1, dtype=torch.long)
    static[:n_numeric] = torch.arange(min(n_numeric, n_static))
    visits = []
    for v in range(max_visits):
        first = n_numeric + v * (n_var + 1)
        step = torch.full((step_size(n_var),), first + n_var, dtype=torch.long)  # times and gaps
        step[:n_var] = step[n_var : 2 * n_var] = torch.arange(first, first + n_var)
        visits.append(step)
    return torch.cat([static, *visits])


def _grouped(attr: Tensor, groups: Tensor) -> Tensor:
    """(N, n_columns) -> (N, groups) sums (columns of group -1 left out)."""
    kept = groups >= 0
    out = torch.zeros(attr.shape[0], int(groups.max()) + 1, dtype=torch.float64)
    return out.index_add_(1, groups[kept], attr.detach().double().cpu()[:, kept])


def attribution_methods(model: nn.Module, test: TestView, cfg: ExperimentConfig) -> dict[str, Any]:
    """{"occlusion": ..., "integrated gradients": ...} per variable and visit; {} for a fitted solver."""
    n_var, max_visits = len(test.data.variables), test.data.max_visits
    if not learns(model) or not n_var:
        return {}
    n_numeric = int(getattr(getattr(model, "static", None), "n_numeric", 0))  # the zoo's history models
    groups = variable_groups(test.data.x.shape[1], n_var, max_visits, n_numeric)

    def occlusion(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> Tensor:
        mask = groups.to(x.device)
        rows = torch.arange(len(x), device=x.device)
        with torch.no_grad():
            reference = model(x)[rows, columns]
            scores = []
            for g in range(int(groups.max()) + 1):
                occluded = x.clone()
                occluded[:, mask == g] = 0.0
                scores.append(reference - model(occluded)[rows, columns])
        return torch.stack(scores, dim=1).detach()

    def integrated_gradients(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> Tensor:
        # cuDNN runs a recurrent network backwards only in training mode: the native kernels in eval mode.
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            base = torch.where(groups.to(x.device) >= 0, 0.0, x.float())  # the level indices stay as they are
            attr = IntegratedGradients(model).attribute(x.float(), base, target=columns, n_steps=IG_STEPS)
        return _grouped(attr, groups)

    return {"occlusion": occlusion, "integrated gradients": integrated_gradients}
