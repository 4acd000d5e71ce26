"""Optimizers and learning-rate schedules (per optimizer step, with linear warmup)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from biomx.config import OptimizerConfig, ScheduleConfig


def build_optimizer(
    model: nn.Module, cfg: OptimizerConfig, multipliers: dict[str, float] | None = None
) -> torch.optim.Optimizer:
    """`multipliers` (train.lr_multipliers): module prefix -> factor on cfg.lr, one parameter group per
    factor (longest prefix wins); schedules scale each group's own base lr. Frozen parameters are left out."""
    from biomx.engine.transfer import multiplier_of

    # No weight decay on biases and norm weights: decaying them only hurts (as in nanoGPT).
    buckets: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((multiplier_of(name, multipliers or {}), p.ndim >= 2), []).append(p)
    groups = [
        {"params": buckets.get((f, decay), []), "weight_decay": cfg.weight_decay if decay else 0.0, "lr": cfg.lr * f}
        for f in sorted({f for f, _ in buckets} | {1.0}, reverse=True) for decay in (True, False)
    ]  # fmt: skip
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_multiplier(cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor applied to the base lr at optimizer step `step` (0-based)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if cfg.name == "cosine":
            cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
            return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine
        if cfg.name == "onecycle":
            # Smith's one-cycle: ramp 1/25 -> 1 over the first 30%, then anneal to ~0.
            if progress < 0.3:
                return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * progress / 0.3))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (progress - 0.3) / 0.7))
        if cfg.name == "step":
            return cfg.gamma ** (step // max(cfg.step_epochs * steps_per_epoch, 1))
        return 1.0

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, total_steps, steps_per_epoch))
