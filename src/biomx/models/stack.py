"""A stack of fitted models: a weighted sum of their raw outputs plus a bias.

`model.name: auto` (see `biomx.selection`) fits the weights on the members' out-of-fold outputs
with the task's own loss, the weights kept non-negative, so the stack is a convex-like blend in
the space the task reads (standardised values, or logits: a weighted geometric pooling of the
members' probabilities). Picking one family is the special case of a single weight 1. The
weights and bias are buffers: a stack is saved, loaded and predicted like any network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Stack(nn.Module):
    def __init__(self, members: Sequence[nn.Module], out_dim: int):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.out_dim = out_dim
        self.register_buffer("weights", torch.zeros(len(members)))
        self.register_buffer("bias", torch.zeros(out_dim))

    def forward(self, batch: Any) -> Tensor:
        out = None
        for weight, member in zip(self.weights.tolist(), self.members, strict=True):
            if weight == 0.0:  # a family the selection left out: never fitted, never run
                continue
            y = member(batch)
            part = weight * y.reshape(len(y), self.out_dim)
            out = part if out is None else out + part
        if out is None:  # nothing fitted yet (the model check before training)
            member_out = self.members[0](batch)
            out = torch.zeros(len(member_out), self.out_dim, dtype=member_out.dtype, device=member_out.device)
        return out + self.bias
