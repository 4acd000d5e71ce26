"""Featurising many molecules in worker processes, in chunks, results in input order."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

PARALLEL_MIN = 2000  # fewer molecules than this are featurised in-process


def default_workers() -> int:
    """Featurisation processes: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def map_chunks(fn: Callable[[list[str]], Any], smiles: Sequence[str], workers: int) -> list[Any]:
    """fn over chunks of `smiles`, in processes for large inputs; results in input order."""
    smiles = list(smiles)
    if workers <= 1 or len(smiles) < PARALLEL_MIN:
        return [fn(smiles)]
    n_chunks = workers * 4
    bounds = np.linspace(0, len(smiles), n_chunks + 1).astype(int)
    chunks = [smiles[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, chunks))
