"""End-to-end training throughput: biomx's Trainer vs a bare PyTorch loop (the ceiling).

Both train ResNet-18 (1 channel in, 1 logit out) on the embedded PneumoniaMNIST chest X-rays
resized to --size, batch --batch-size, fp32, on CPU, with AdamW, grad clipping 1.0 and a
LambdaLR schedule, on the same subset of --steps * --batch-size training images.

- biomx: what a user gets. `_fit_size_and_channels` resizes the npz once (float16),
  `ImageTensorDataset` augments (flip, rotate, translate, contrast) and normalises every batch,
  `Trainer.fit()` runs 2 epochs of --steps steps; the 2nd epoch's own `samples_per_s` is
  reported (the 1st is warm-up). Data loading and augmentation are inside the timing.
- ceiling: the same model (fresh, same seed) and optimizer in a bare loop over pre-normalised
  float32 batches already in memory (no DataLoader, no augmentation): forward, loss, backward,
  clip, step, zero_grad, scheduler step. 5 warm-up steps, then one timed pass of --steps.

The two alternate (biomx, ceiling, biomx, ceiling, ...) in one process so machine noise hits
both; the medians and their ratio biomx / ceiling are printed (target >= 0.90).

    .venv/bin/python benchmarks/train_throughput.py [--rounds 3] [--steps 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from biomx.config import OptimizerConfig, ScheduleConfig, TrainConfig
from biomx.datasets import get_dataset
from biomx.engine import logging as biomx_logging
from biomx.engine.optim import build_optimizer, build_scheduler
from biomx.engine.trainer import Trainer
from biomx.modalities.image import Augment, ImageTensorDataset, collate_batch, load_npz_splits
from biomx.modalities.image_source import _fit_size_and_channels
from biomx.models.registry import build_model
from biomx.tasks.classification import build_task

SEED = 0
WARMUP_STEPS = 5  # ceiling only
AUGMENT = Augment(hflip=0.5, rotate=10, translate=0.05, contrast=0.1)


def load_data(size: int, n: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """The first `n` training images resized by the real pipeline, targets, and mean/std."""
    x, y = load_npz_splits(get_dataset("pneumoniamnist").path)["train"]
    if n > len(x):
        raise SystemExit(f"--steps * --batch-size = {n} exceeds the {len(x)} training images")
    images = _fit_size_and_channels(torch.from_numpy(x[:n]), (size, size), 1)
    sample = images.float()
    if images.dtype == torch.uint8:
        sample /= 255
    # As experiment.prepare: statistics of the training images.
    mean, std = sample.mean().item(), sample.std().clamp_min(1e-6).item()
    return images, torch.from_numpy(y[:n]).float(), mean, std


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return build_model("resnet18", in_channels=1, out_dim=1)


def run_biomx(dataset: ImageTensorDataset, loss_fn, batch_size: int) -> float:
    """samples/s of the 2nd (timed) epoch of Trainer.fit() over `dataset`."""
    settings = TrainConfig(epochs=2, batch_size=batch_size, precision="fp32", device="cpu",
                           progress=False, seed=SEED)
    trainer = Trainer(fresh_model(), loss_fn, dataset, settings=settings, run_dir=None,
                      collate_fn=collate_batch, tensorboard=False)
    console = biomx_logging.console
    quiet, console.quiet = console.quiet, True  # no per-epoch lines in the benchmark output
    try:
        history = trainer.fit()
    finally:
        console.quiet = quiet
    return float(history[-1]["samples_per_s"])


def run_ceiling(batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn) -> float:
    """samples/s of a bare loop over in-memory batches (a short warm-up, then one timed pass)."""
    model = fresh_model()
    model.train()
    optimizer = build_optimizer(model, OptimizerConfig())
    steps = len(batches)
    scheduler = build_scheduler(optimizer, ScheduleConfig(), 2 * steps, steps)
    grad_clip = TrainConfig().grad_clip
    torch.manual_seed(SEED)

    def one_pass(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        started = time.perf_counter()
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        return time.perf_counter() - started

    # Warm-up: the first steps allocate AdamW's state and oneDNN's primitives; a few suffice
    # (the biomx side warms up with a whole epoch because the Trainer times whole epochs).
    one_pass(batches[:WARMUP_STEPS])
    elapsed = one_pass(batches)
    return sum(len(x) for x, _ in batches) / elapsed


def time_data_path(dataset: ImageTensorDataset, batch_size: int) -> float:
    """Median ms to fetch, augment and normalise one batch (the part the ceiling skips)."""
    times = []
    for start in range(0, len(dataset) - batch_size + 1, batch_size):
        indices = list(range(start, start + batch_size))
        t = time.perf_counter()
        dataset.__getitems__(indices)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="biomx/ceiling pairs (default 3)")
    parser.add_argument("--steps", type=int, default=20,
                        help="optimizer steps per epoch; the subset is steps * batch-size images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.size < 8 or args.batch_size < 1:
        parser.error("--rounds, --steps and --batch-size must be >= 1, --size >= 8")

    n = args.steps * args.batch_size
    images, targets, mean, std = load_data(args.size, n)
    dataset = ImageTensorDataset(images, targets, augment=AUGMENT, normalize=(mean, std),
                                 seed=SEED)
    plain = (images.float() / (255 if images.dtype == torch.uint8 else 1) - mean) / std
    batches = [(plain[i:i + args.batch_size].contiguous(), targets[i:i + args.batch_size])
               for i in range(0, n, args.batch_size)]
    loss_fn = build_task("binary", ["normal", "pneumonia"]).loss

    print(f"ResNet-18, {args.size}x{args.size}x1, batch {args.batch_size}, fp32 CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{args.steps} steps/epoch over {n} images ({images.dtype})", flush=True)
    biomx_rates, ceiling_rates = [], []
    started = time.perf_counter()
    for r in range(args.rounds):
        biomx_rates.append(run_biomx(dataset, loss_fn, args.batch_size))
        ceiling_rates.append(run_ceiling(batches, loss_fn))
        print(f"round {r + 1}/{args.rounds}: biomx {biomx_rates[-1]:7.1f} samples/s   "
              f"ceiling {ceiling_rates[-1]:7.1f} samples/s   "
              f"ratio {biomx_rates[-1] / ceiling_rates[-1]:.2f}", flush=True)
    data_ms = time_data_path(dataset, args.batch_size)

    biomx_median = statistics.median(biomx_rates)
    ceiling_median = statistics.median(ceiling_rates)
    ratio = biomx_median / ceiling_median
    step_ms = args.batch_size / ceiling_median * 1e3
    print(f"median: biomx {biomx_median:.1f} samples/s, ceiling {ceiling_median:.1f} samples/s")
    print(f"data path (index + float + augment + normalise): {data_ms:.1f} ms/batch "
          f"vs {step_ms:.0f} ms/step of compute ({data_ms / step_ms:.1%})")
    print(f"ratio biomx/ceiling: {ratio:.2f}  (target >= 0.90)  "
          f"[{time.perf_counter() - started:.0f} s]")

    result = {
        "benchmark": "train_throughput",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "config": {"model": "resnet18", "size": args.size, "batch_size": args.batch_size,
                   "steps": args.steps, "rounds": args.rounds, "precision": "fp32",
                   "device": "cpu", "image_dtype": str(images.dtype).removeprefix("torch."),
                   "augment": {"hflip": 0.5, "rotate": 10, "translate": 0.05, "contrast": 0.1}},
        "biomx_samples_per_s": biomx_rates,
        "ceiling_samples_per_s": ceiling_rates,
        "biomx_median": biomx_median,
        "ceiling_median": ceiling_median,
        "ratio": round(ratio, 4),
        "data_ms_per_batch": data_ms,
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
