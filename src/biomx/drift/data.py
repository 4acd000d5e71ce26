"""What drift compares: a run's training rows and new inputs as raw graph inputs (the run's
modality reads both, as `biomx predict --engine` and the export check do), and what the model
makes of them: its penultimate-layer representation and its predictions.

The representation is the input of the last `nn.Linear` of the first ensemble member (the head,
for every zoo network); a model without one (the tree and kernel solvers) gives its outputs
instead, and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.errors import BiomxError
from biomx.export.graph import LoadedGraph

BATCH = 256


@dataclass
class ModelView:
    """The model's embedding (N, d) and predictions (N, k) of some raw inputs."""

    embeddings: np.ndarray
    predictions: np.ndarray


def reference_rows(loaded: LoadedGraph, size: int, seed: int) -> tuple[torch.Tensor, int]:
    """Up to `size` of the run's training rows (a seeded sample), as raw graph inputs, and how
    many training rows there are. The training split is rebuilt from the run's config and data."""
    from biomx.config import load_config
    from biomx.experiment import prepare  # the experiment wiring: heavy, needed only here

    config = loaded.run_dir / "config.yaml"
    if not config.is_file():
        raise BiomxError(f"{loaded.run_dir}: no config.yaml; drift rebuilds the training split from it")
    p = prepare(load_config(config))
    train = np.asarray(p.splits["train"])
    if len(train) < 2:
        raise BiomxError(f"{loaded.run_dir}: the training split has {len(train)} rows; drift needs at least 2")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(train, min(size, len(train)), replace=False))
    return loaded.modality.raw_rows(loaded.info["preprocessing"], p.data, pick), len(train)


def new_rows(loaded: LoadedGraph, inputs: list[str | Path], skip_errors: bool) -> tuple[torch.Tensor, list]:
    """The new inputs as raw graph inputs (what `biomx predict RUN INPUTS` reads), and skipped ones."""
    for path in inputs:
        if not Path(path).exists():
            raise BiomxError(f"{path}: no such file or folder")
    raw, _names, failures = loaded.modality.read_raw(loaded.info["preprocessing"], list(inputs), skip_errors)
    if len(raw) < 2:
        raise BiomxError(f"{', '.join(map(str, inputs))[:200]}: {len(raw)} readable inputs; drift needs at least 2")
    return raw, failures


def head_layer(model: nn.Module) -> nn.Module | None:
    """The last `nn.Linear` of a model (its head), or None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def representation(loaded: LoadedGraph) -> str:
    """What the embeddings are, in words (for the report)."""
    head = head_layer(loaded.graph.members[0])
    if head is None:
        return "the model's outputs (it has no linear head)"
    name = next(n for n, m in loaded.graph.members[0].named_modules() if m is head)
    return f"the input of the head, layer `{name}` (nn.Linear, {head.in_features} features) of the first member"


@torch.no_grad()
def model_view(loaded: LoadedGraph, raw: torch.Tensor) -> ModelView:
    """Embeddings (the head's input, else the outputs) and predictions, batch by batch."""
    member = loaded.graph.members[0]
    head = head_layer(member)
    captured: list[torch.Tensor] = []
    calls = [0]  # per batch: a model called twice (both strands) gives its first call's embedding

    def keep(_module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        calls[0] += 1
        if calls[0] == 1:
            captured.append((args[0] if head is not None else out).detach().float().flatten(1))

    handle = (head or member).register_forward_hook(keep)
    predictions = []
    try:
        for chunk in raw.split(BATCH):
            calls[0] = 0
            out = loaded.graph(chunk)
            predictions.append((out[0] if isinstance(out, tuple) else out).float())
    finally:
        handle.remove()
    emb = torch.cat(captured).numpy() if captured else np.zeros((0, 0))
    preds = torch.cat(predictions).numpy()
    return ModelView(emb.astype(np.float64), preds.reshape(len(preds), -1).astype(np.float64))
