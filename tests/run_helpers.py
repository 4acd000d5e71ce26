"""Assertions on finished runs shared by test modules (plain functions; `from run_helpers import ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def assert_same_runs(runs: Path, first: str, second: str) -> None:
    """Runs `runs/first` and `runs/second` trained bit-identical best weights and scored the same
    test metrics: two data paths (folder vs shards, memory vs stream) fed the same batches."""
    a, b = (load_file(runs / s / "checkpoints" / "best.safetensors") for s in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((runs / s / "test_metrics.json").read_text()) for s in (first, second)]
    assert metrics[0] == metrics[1]
