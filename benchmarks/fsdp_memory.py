"""Peak memory per rank: `train.strategy: ddp` against `fsdp`, 2 CPU ranks (gloo), in one run.

Both sides train the same wide ResNet-18 (MONAI's, `widen_factor` --width, small stem, 1 channel
in, 1 logit out) with biomx's Trainer on the embedded PneumoniaMNIST chest X-rays (28x28), AdamW,
global batch --batch-size, --steps optimizer steps, fp32, no checkpoints (run_dir=None). The
script launches `torchrun --nproc-per-node 2` for each side (ddp first, then fsdp) and each rank
reports, from /proc/self/status:

- base: resident memory after imports and data, before the model is built;
- built: resident memory once the Trainer is made (DDP: model + its gradient buckets; FSDP: the
  model built whole on every rank, then sharded in place, the full copy freed);
- train peak: the high-water mark while training (reset with /proc/self/clear_refs after the
  Trainer is made, read after every optimizer step, so not the unsharded copy that `fit` makes
  at the end for evaluation), i.e. weights + gradients + AdamW's two moments + activations +
  under FSDP the all-gathered unit(s). glibc runs with a fixed mmap threshold so that freed
  tensors leave the resident set at once.

Memory above `base` is what the model costs; the ratio fsdp / ddp of the mean over ranks of
(train peak - base) is printed. Linux only (procfs).

    .venv/bin/python benchmarks/fsdp_memory.py [--width 2] [--steps 3] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _rank(args: argparse.Namespace) -> None:
    """One rank of one side (run under torchrun)."""
    import numpy as np
    import torch

    from biomx.config import TrainConfig
    from biomx.data.batching import collate_batch
    from biomx.datasets import get_dataset
    from biomx.engine import distributed as dist
    from biomx.engine.runtime import seed_everything
    from biomx.engine.trainer import Trainer
    from biomx.modalities.common.tensor_dataset import ImageTensorDataset
    from biomx.models.image2d import resnet

    torch.set_num_threads(1)
    n = args.steps * args.batch_size
    with np.load(get_dataset("pneumoniamnist").path) as arrays:
        images = torch.from_numpy(arrays["train_images"][:n]).unsqueeze(1)
        labels = torch.from_numpy(arrays["train_labels"][:n, 0]).float()
    base = _status_kib("VmRSS")
    seed_everything(0)
    model = resnet(18, in_channels=1, out_dim=1, stem="small", widen_factor=args.width)
    params = sum(p.numel() for p in model.parameters())
    settings = TrainConfig(epochs=1, batch_size=args.batch_size, device="cpu", progress=False, strategy=args.strategy)
    loss = torch.nn.BCEWithLogitsLoss()
    peaks: list[int] = []
    trainer = Trainer(model, lambda out, y: loss(out.squeeze(1), y), ImageTensorDataset(images, labels),
                      settings=settings, collate_fn=collate_batch, tensorboard=False,
                      step_hook=lambda _: peaks.append(_status_kib("VmHWM")))  # fmt: skip
    built = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    trainer.fit()
    peak = max(peaks)  # after each optimizer step: not the unsharded copy `fit` makes at the end for evaluation
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in trainer.optimizer.param_groups[0]["params"])
    out = {"rank": dist.rank(), "params": params, "local_params": local, "base_mib": base / 1024,
           "built_mib": (built - base) / 1024, "train_peak_mib": (peak - base) / 1024,
           "units": trainer.sharding.units if trainer.sharding is not None else 0}  # fmt: skip
    Path(args.out, f"{args.strategy}{dist.rank()}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.cleanup()


def _side(strategy: str, args: argparse.Namespace, out: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--rank-of", strategy, "--out", out, "--width", str(args.width), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size)]  # fmt: skip
    # A fixed mmap threshold: freed tensors go back to the OS at once, so RSS follows what is allocated
    # (glibc's adaptive threshold would keep freed blocks of up to 32 MiB in the heap).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise SystemExit(f"{strategy} failed:\n{result.stderr[-3000:]}")
    return [json.loads(Path(out, f"{strategy}{r}.json").read_text()) for r in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=2.0, help="ResNet-18 widen_factor (2: ~45M parameters)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank-of", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_of:
        args.strategy = args.rank_of
        _rank(args)
        return
    with tempfile.TemporaryDirectory() as out:
        sides = {s: _side(s, args, out) for s in ("ddp", "fsdp")}
    first = sides["ddp"][0]
    print(f"ResNet-18 widen {args.width}: {first['params'] / 1e6:.1f}M parameters "
          f"({first['params'] * 4 / 2**20:.0f} MiB fp32); 2 CPU ranks, batch {args.batch_size}, {args.steps} steps")  # fmt: skip
    print(f"{'side':5} {'rank':>4} {'params held':>12} {'units':>5} {'built MiB':>10} {'train peak MiB':>15}")
    for side, ranks in sides.items():
        for r in ranks:
            print(f"{side:5} {r['rank']:>4} {r['local_params'] / 1e6:>11.1f}M {r['units']:>5} "
                  f"{r['built_mib']:>10.0f} {r['train_peak_mib']:>15.0f}")  # fmt: skip
    mean = {s: sum(r["train_peak_mib"] for r in ranks) / len(ranks) for s, ranks in sides.items()}
    print(f"train peak above base, mean over ranks: ddp {mean['ddp']:.0f} MiB, fsdp {mean['fsdp']:.0f} MiB, "
          f"ratio fsdp/ddp {mean['fsdp'] / mean['ddp']:.2f}")


if __name__ == "__main__":
    main()
