"""A run's model(s) as one `nn.Module` from raw inputs to task-space predictions.

raw -> the modality's `ExportPlan.prepare` -> every ensemble member (through the modality's
`inference_model`) -> `task.predictions` -> the mean over members, and for an ensemble the
sample std (ddof=1, as `biomx.uncertainty.mean_and_std`). This is what `biomx export` traces, and
what the torch engine runs. MC dropout is not part of it: the graph is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biomx.errors import ExportRefused
from biomx.modalities import get_modality
from biomx.protocols import ExportableModality, ExportPlan, Modality, Task
from biomx.runs import load_run_models
from biomx.tasks import task_from_info


class RunGraph(nn.Module):
    """raw input -> predictions (mean over members), or (predictions, std) for >1 member."""

    def __init__(self, prepare: nn.Module, members: list[nn.Module], task: Task) -> None:
        super().__init__()
        self.prepare = prepare
        self.members = nn.ModuleList(members)
        self.task = task  # not a module: its `predictions` are tensor ops (softmax, de-standardising)

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1

    def forward(self, raw: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(raw)
        passes = [self.task.predictions(member(x)) for member in self.members]
        if len(passes) == 1:
            return passes[0]
        stacked = torch.stack(passes)
        return stacked.mean(0), stacked.std(0, unbiased=True)


@dataclass
class LoadedGraph:
    """A run's graph and what describes it."""

    graph: RunGraph
    plan: ExportPlan
    info: dict[str, Any]  # run.json (as the checkpoint carries it)
    modality: Modality
    task: Task
    run_dir: Path


def export_plan(modality: Modality, preprocessing: dict[str, Any], run_dir: Path) -> ExportPlan:
    """The modality's plan, or one line saying why this run has none."""
    if not isinstance(modality, ExportableModality):
        raise ExportRefused(f"{run_dir}: the {modality.name} modality cannot be exported (it offers no export plan)")
    return modality.export_plan(preprocessing)


def load_graph(run_dir: str | Path, checkpoint: str = "best") -> LoadedGraph:
    """Rebuild a run's graph (every member's `checkpoint` weights), in eval mode on the CPU.

    Raises:
        BiomxError: no run or checkpoint (as `load_run_models`).
        ExportRefused: a modality without an export plan, or one that refuses this run.
    """
    run_dir = Path(run_dir)
    models, info = load_run_models(run_dir, checkpoint)
    # Runs written before run.json named its modality kept it in the preprocessing record.
    modality = get_modality(info.get("modality") or info["preprocessing"]["modality"])
    task = task_from_info(info["task"])
    plan = export_plan(modality, info["preprocessing"], run_dir)
    members = [modality.inference_model(model, info["preprocessing"]).eval() for model in models]
    graph = RunGraph(plan.prepare.eval(), members, task).eval()
    return LoadedGraph(graph, plan, info, modality, task, run_dir)
