"""The sequence modality's attribution methods for the explanation checks: integrated gradients (the
report's logos) and in-silico mutagenesis, both as one importance per position.

Integrated gradients (shuffled baselines) keep the observed base's contribution (attribution x
input), summed over the four channels; mutagenesis gives the mean |change| of the explained logit
over the three substitutions at each position. Nucleotide one-hot inputs only (as the report's
logos); protein runs offer none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from biomx.config import ExperimentConfig
from biomx.explain.sanity import learns
from biomx.modalities.sequence.interpret import in_silico_mutagenesis, integrated_gradients
from biomx.protocols import TestView

IG_STEPS = 32


def attribution_methods(model: nn.Module, test: TestView, cfg: ExperimentConfig) -> dict[str, Any]:
    """{"integrated gradients": ..., "in-silico mutagenesis": ...} per position; {} for proteins."""
    if cfg.data.sequence.alphabet not in ("dna", "rna") or not learns(model):
        return {}

    def ig(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> Tensor:
        rows = [integrated_gradients(model, x[i : i + 1], target=int(c), steps=IG_STEPS)[0].sum(dim=0)
                for i, c in enumerate(columns.tolist())]  # fmt: skip
        return torch.stack(rows).detach()

    def ism(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> Tensor:
        rows = [in_silico_mutagenesis(model, x[i : i + 1], target=int(c))[0].abs().sum(dim=0) / 3
                for i, c in enumerate(columns.tolist())]  # fmt: skip
        return torch.stack(rows).detach()

    return {"integrated gradients": ig, "in-silico mutagenesis": ism}
