"""An exponential moving average of the weights (`train.ema: DECAY`), the model a run validates,
keeps as best.safetensors and tests.

After every optimizer step each floating-point tensor of the model's state (parameters and
batch-norm statistics alike) moves towards the trained one:

    average = decay_t * average + (1 - decay_t) * weights,   decay_t = min(decay, (1 + t) / (10 + t))

where t counts the updates. The warm-up term keeps the first steps, whose weights are still
random, from dominating a long average. The average spans about 1 / (1 - decay) steps: a run
of a few hundred steps wants 0.99, a long one 0.999. Integer state (batch-norm's batch count) is
copied, not averaged.

Why: on small data the weights of the last steps wander with each mini-batch; their average is a
flatter, better-generalising point (Polyak and Juditsky 1992; Izmailov et al. 2018), at the cost
of one more copy of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biomx.errors import BiomxError


class WeightAverage:
    """The running average of `model`'s state, started from its current weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        floats, trained, others = [], [], []
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                floats.append(self.average[key])
                trained.append(value.detach())
            else:
                others.append((self.average[key], value))
        return floats, trained, others

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards `model`'s weights (call after each optimizer step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats, trained, others = self._pairs(model)
        if floats:
            torch._foreach_lerp_(floats, trained, 1.0 - decay)  # one fused kernel over all tensors
        for average, value in others:
            average.copy_(value)

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """`model` holds the averaged weights inside the block and its trained ones again after."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(trained)

    def checkpoint(self) -> dict[str, Any]:
        """What last.safetensors keeps so that a resumed run continues the same average."""
        return {"ema": {"updates": self.updates, "weights": self.average}}

    def restore(self, extra: dict[str, Any], path: Path) -> None:
        """Continue the average saved in `extra` (a checkpoint's state)."""
        saved = extra.get("ema")
        if saved is None:
            raise BiomxError(f"{path}: saved without train.ema, so it cannot resume a run with it; "
                             "remove train.ema or start a new run")  # fmt: skip
        self.updates = int(saved["updates"])
        for key, value in saved["weights"].items():
            self.average[key].copy_(value)


def averaged(average: WeightAverage | None, model: nn.Module) -> contextlib.AbstractContextManager:
    """The averaged weights in `model` for the block, or nothing to do without train.ema."""
    return average.swapped_in(model) if average is not None else contextlib.nullcontext()
