"""The model's weights as Flower carries them: its `state_dict` (buffers included, so batch-norm
statistics are averaged too) as numpy arrays in the state_dict's own key order, which every site
and the server share because they build the same model from the same experiment config."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from biomx.engine.runtime import seed_everything
from biomx.errors import BiomxError
from biomx.experiment import Prepared
from biomx.models.registry import build_model


def build_global_model(p: Prepared, seed: int) -> nn.Module:
    """The experiment's model with the federation's initial weights (the same on every process)."""
    seed_everything(seed)
    return build_model(p.info["model"]["name"], **p.info["model"]["args"])


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    state = model.state_dict()
    if len(weights) != len(state):
        raise BiomxError(f"federation: got {len(weights)} arrays for a model with {len(state)} tensors; "
                         "every site must train the same experiment config")  # fmt: skip
    model.load_state_dict({k: torch.as_tensor(np.asarray(w)).to(v.dtype).reshape(v.shape)
                           for (k, v), w in zip(state.items(), weights, strict=True)})  # fmt: skip


def to_state(keys: list[str], weights: list[np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}
