"""The molecule modality's attribution methods for the explanation checks.

Graph networks: integrated gradients per atom (the report's method, `atom_attributions`) and atom
occlusion (each atom's features set to 0 in turn, the change of the explained output recorded):
one score per atom of each molecule. Models reading a feature vector (a fingerprint MLP): bit
occlusion (each non-zero column set to 0, as the report's bit attributions) and integrated gradients
of the vector from all zeros: one score per non-zero column. Fitted solvers (no gradients) offer none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients
from torch import Tensor, nn
from torch_geometric.data import Data

from biomx.config import ExperimentConfig
from biomx.explain import eval_mode, output_column
from biomx.explain.sanity import learns
from biomx.modalities.molecule.bit_attributions import occlusion
from biomx.modalities.molecule.interpret import _replicate, _subset, atom_attributions
from biomx.protocols import TestView

IG_STEPS = 32


def _atom_ig(model: nn.Module, task: Any, batch: Data, columns: Tensor) -> list[np.ndarray]:
    return [atom_attributions(model, _subset(batch, [i]), target=int(c), steps=IG_STEPS)[0]
            for i, c in enumerate(columns.tolist())]  # fmt: skip


def _atom_occlusion(model: nn.Module, task: Any, batch: Data, columns: Tensor) -> list[np.ndarray]:
    found = []
    for i, c in enumerate(columns.tolist()):
        one = _subset(batch, [i])
        atoms = one.x.shape[0]
        x = one.x.repeat(atoms + 1, 1)  # copy 0 as it is, copy j + 1 without atom j's features
        x[torch.arange(1, atoms + 1, device=x.device) * atoms + torch.arange(atoms, device=x.device)] = 0
        with eval_mode(model), torch.no_grad():
            out = model(_replicate(one, x, atoms + 1))
            column = output_column(out.unsqueeze(1) if out.dim() == 1 else out, int(c), atoms + 1, "molecules")
        found.append((column[0] - column[1:]).double().cpu().numpy())
    return found


def _on_columns(batch: Data) -> list[np.ndarray]:
    """Each molecule's non-zero vector columns: elsewhere both methods give exactly 0 by construction,
    shared zeros that would make any two attributions look alike."""
    return [np.flatnonzero(row) for row in batch.features.detach().cpu().numpy()]


def _bit_occlusion(model: nn.Module, task: Any, batch: Data, columns: Tensor) -> list[np.ndarray]:
    return [occlusion(model, batch.features[i], on, int(c))[1] if len(on) else np.zeros(0)
            for i, (on, c) in enumerate(zip(_on_columns(batch), columns.tolist(), strict=True))]  # fmt: skip


def _vector_ig(model: nn.Module, task: Any, batch: Data, columns: Tensor) -> list[np.ndarray]:
    def forward(features: Tensor) -> Tensor:
        inputs = Data(features=features)
        inputs.num_molecules = len(features)
        out = model(inputs)
        return out.unsqueeze(1) if out.dim() == 1 else out

    with torch.enable_grad():
        attr = IntegratedGradients(forward).attribute(batch.features.float(), target=columns, n_steps=IG_STEPS)
    attr = attr.detach().double().cpu().numpy()
    return [attr[i, on] for i, on in enumerate(_on_columns(batch))]


def attribution_methods(model: nn.Module, test: TestView, cfg: ExperimentConfig) -> dict[str, Any]:
    """Per atom for graph networks, per vector column for vector networks; {} for solvers."""
    if not learns(model):
        return {}
    if getattr(test.data, "graphs", None) is not None:
        return {"integrated gradients (atoms)": _atom_ig, "atom occlusion": _atom_occlusion}
    return {"bit occlusion": _bit_occlusion, "integrated gradients (bits)": _vector_ig}
