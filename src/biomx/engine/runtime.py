"""Where and how reproducibly training runs: the device, the seeds, deterministic kernels."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from biomx.engine import distributed as dist
from biomx.errors import BiomxError


def select_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; under torchrun each rank takes its LOCAL_RANK GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BiomxError("train.device: cuda was asked for but no CUDA GPU is available")
        return torch.device("cuda", dist.local_rank() % torch.cuda.device_count())
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BiomxError("train.device: mps was asked for but is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    if enabled and torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
