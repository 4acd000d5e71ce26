"""Dropout at inference (Monte Carlo dropout); moved out of trainer.py, which re-exports it."""

from __future__ import annotations

from torch import nn


def enable_dropout(model: nn.Module) -> int:
    """Switch only the dropout layers of an eval-mode model to train mode (MC dropout).

    Returns the number of dropout layers found (0: MC dropout would give identical passes).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for layer in layers:
        layer.train()
    return len(layers)
