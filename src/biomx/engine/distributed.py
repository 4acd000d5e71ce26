"""torch.distributed helpers: started by `torchrun`, a no-op in a single process.

biomx never launches processes itself; `torchrun --nproc_per_node N -m biomx train ...`
sets RANK/WORLD_SIZE/LOCAL_RANK and we join the process group it describes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from biomx.errors import BiomxError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> None:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1)."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if device.type == "cuda":
        # NCCL carries the CUDA tensors (DDP's gradients) and gloo the CPU ones: the loss means,
        # stop flags, gathered predictions and RNG states; NCCL alone refuses CPU tensors.
        torch.cuda.set_device(device)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group(backend="gloo")


def init_for_inference() -> None:
    """Join torchrun's process group for work that gathers CPU results (`biomx predict`): gloo,
    whatever device the models run on."""
    if not is_distributed() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="gloo")


def shard(n: int) -> range:
    """This rank's contiguous share of n rows (the ranks' shares, in rank order, are 0..n-1)."""
    r, w = rank(), world_size()
    return range(n * r // w, n * (r + 1) // w)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def check_shared(path: Path, setting: str) -> None:
    """Every rank must see the file rank 0 just wrote: the run folder is read back on every rank
    (the best checkpoint for the test split, `--resume`), so on several machines it must be on a
    filesystem they share. One line on every rank, not a silent mismatch later."""
    if not is_distributed():
        return
    barrier()
    if any_rank(not path.exists()):
        raise BiomxError(f"{setting}: {path.parent} is not shared by every process (rank 0 wrote {path.name}, "
                         "another rank cannot read it); on several machines put it on a shared filesystem")


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (identity in one process)."""
    if not is_distributed():
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / world_size()


def any_rank(flag: bool) -> bool:
    """True if `flag` is set on any rank (so every rank stops at the same step)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate per-rank tensors of different lengths along dim 0, on every rank."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().cpu().contiguous()
    n = torch.tensor([tensor.shape[0]])
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


def cleanup() -> None:
    """Leave the process group."""
    if is_distributed():
        # First let gloo's worker threads release the collectives they finished: releasing a tensor
        # made in Python takes the GIL, and destroying the group joins those threads while holding
        # it. Without the pause the end of a run deadlocked under CPU load (torch 2.13; sleep frees the GIL).
        time.sleep(0.2)
        dist.destroy_process_group()
