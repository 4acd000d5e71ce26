"""Detection training throughput: biomx's Trainer vs MONAI's RetinaNetDetector in a bare loop.

Both sides train the same RetinaNet (`retinanet` from the zoo, fresh with the same seed) with the
same ATSS matcher, hard-negative sampler and losses, on the same kind of patches, fp32 on CPU,
AdamW + the config's schedule, grad clipping, the config's batch size. Augmentation is off.

- 2D: `examples/detection_nuclei.yaml` on the real nuclei image cut into 128 px tiles with their
  instance masks (`biomx.tasks.detection.starter`), 64 px patches, batch 16.
- 3D: `examples/detection_lesions3d.yaml` on the synthetic lesion volumes with their box file
  (`biomx.tasks.detection.lesion_boxes`), 32^3 patches, batch 4.

- biomx: what `biomx train` builds: `load_config` + `experiment.prepare` (the task's datasets:
  `BoxPatches` reading the preprocessed cases from the case cache, cutting patches and padding
  box targets per batch) + `experiment._trainer` (the Trainer with `collate_batch`, the task's
  loss: the model's (B, C, A, 4D + 2) rows split back into head outputs, padded targets into
  box dicts, MONAI's `compute_loss`). 2 epochs; the 2nd epoch's own `samples_per_s` is reported
  (validation off: its time is not in `samples_per_s` anyway).
- ceiling: MONAI's `RetinaNetDetector` (the task's `make_detector`, same settings) around the
  same model's MONAI `RetinaNet` and anchor generator, called as `detector(images, targets)` in
  training mode over patches already in memory: float32 tensors and their box dicts, cut once
  from the same dataset (epoch 2's patches, not timed). 3 warm-up steps, then one timed pass.

Rounds alternate (biomx, ceiling, ...) in one process; the medians and their ratio are printed
(target >= 0.85), with the median of the per-round ratios (a burst of load from another process
hits one round's pair, not one side's median) and batch / median step time as cross-checks.
Both sides run with `--threads` torch threads (default 1: on a few cores shared with other
processes, 2 OpenMP threads wait on each other at every operator and a run gets 10-25x slower
and erratic, whichever side it is).

    .venv/bin/python benchmarks/detection_throughput.py [--dims 2d 3d] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import platform
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from biomx import experiment
from biomx.config import load_config
from biomx.engine import logging as biomx_logging
from biomx.engine.checkpoint import atomic_write_text
from biomx.engine.optim import build_optimizer, build_scheduler
from biomx.engine.runtime import seed_everything
from biomx.models.registry import build_recorded
from biomx.tasks.detection.task import make_detector

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3  # ceiling only; biomx warms up with a whole epoch (the Trainer times epochs)
NOISY = 1.15
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "detection_throughput.json"

Batch = tuple[torch.Tensor, list[dict[str, torch.Tensor]]]


def write_data(dims: str, folder: Path) -> list[str]:
    """The dataset for `dims` in `folder`; the config overrides that point the example at it."""
    if dims == "2d":
        from biomx.tasks.detection.starter import write_nuclei_instances

        write_nuclei_instances(folder / "nuclei", 128)
        return [f"data.path={folder / 'nuclei'}", "data.image.scan.augment={}",
                f"data.image.scan.cache_dir={folder / 'cache'}"]  # fmt: skip
    from biomx.tasks.detection.lesion_boxes import write_lesion_detection_dataset

    write_lesion_detection_dataset(folder / "lesions", n_cases=24, seed=0)
    return [f"data.path={folder / 'lesions'}", f"task.boxes={folder / 'lesions' / 'boxes.json'}",
            "data.volume.augment={}", f"data.volume.cache_dir={folder / 'cache'}"]  # fmt: skip


def prepare(dims: str, folder: Path, extra: list[str]) -> experiment.Prepared:
    """`experiment.prepare` on the example config, as `biomx train` runs it, for 2 epochs on CPU."""
    example = ROOT / "examples" / ("detection_nuclei.yaml" if dims == "2d" else "detection_lesions3d.yaml")
    overrides = [*write_data(dims, folder), "train.epochs=2", "train.device=cpu", "train.precision=fp32",
                 "train.progress=false", "output.tensorboard=false", f"output.dir={folder / 'runs'}", *extra]  # fmt: skip
    p = experiment.prepare(load_config(example, overrides))
    p.datasets["val"] = []  # no validation pass between epochs (it is outside samples_per_s anyway)
    return p


def run_biomx(p: experiment.Prepared, profile: bool = False) -> tuple[float, float, str]:
    """(Trainer's samples/s of the 2nd epoch, batch / median step interval of that epoch, profile)."""
    stamps: list[float] = []
    trainer = experiment._trainer(p, None)  # what `biomx train` builds (no run folder)
    trainer.step_hook = lambda _: stamps.append(time.perf_counter())
    console = biomx_logging.console
    quiet, console.quiet = console.quiet, True
    profiler = cProfile.Profile() if profile else None
    try:
        if profiler is not None:
            profiler.enable()
        history = trainer.fit()
    finally:
        if profiler is not None:
            profiler.disable()
        console.quiet = quiet
    timed = stamps[trainer.steps_per_epoch:]
    intervals = [b - a for a, b in zip(timed, timed[1:], strict=False)]
    step_rate = p.cfg.train.batch_size / statistics.median(intervals) if intervals else float("nan")
    report = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        report = out.getvalue()
    return float(history[-1]["samples_per_s"]), step_rate, report


def ceiling_batches(p: experiment.Prepared) -> list[Batch]:
    """Epoch 2's training patches as in-memory float32 tensors and MONAI box dicts (untimed)."""
    data, batch = p.datasets["train"], p.cfg.train.batch_size
    data.set_epoch(1)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(p.cfg.train.seed + 1)).tolist()
    out = []
    for start in range(0, len(order) - batch + 1, batch):
        x, y = data.__getitems__(order[start:start + batch])
        out.append((x.float().contiguous(), p.task.target_dicts(y)))
    return out


def detector_for(p: experiment.Prepared) -> tuple[Any, torch.nn.Module]:
    """(MONAI RetinaNetDetector with the task's settings around the model's network, the model)."""
    seed_everything(p.cfg.train.seed)  # as experiment._trainer: the same initial weights
    model = build_recorded(p.info["model"])
    t = p.task
    detector = make_detector(t.spatial_dims, len(t.classes), t.num_anchors, samples_per_image=t.samples_per_image,
                             positive_fraction=t.positive_fraction, score_threshold=t.score_threshold,
                             nms_iou=t.nms_iou, detections_per_image=t.detections_per_image)  # fmt: skip
    detector.network, detector.anchor_generator = model.network, model.anchor_generator
    return detector, model


def run_ceiling(p: experiment.Prepared, batches: list[Batch]) -> tuple[float, float]:
    """(samples/s of a bare timed pass over in-memory patches, batch / median step time)."""
    detector, model = detector_for(p)
    detector.train()
    train = p.cfg.train
    optimizer = build_optimizer(model, train.optimizer)
    steps = len(batches)
    scheduler = build_scheduler(optimizer, train.schedule, WARMUP_STEPS + steps, steps)
    torch.manual_seed(train.seed)

    def one_pass(batches: list[Batch]) -> list[float]:
        stamps = [time.perf_counter()]
        for x, targets in batches:
            losses = detector(x, targets)
            loss = losses["classification"] + losses["box_regression"]
            loss.backward()
            if train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            stamps.append(time.perf_counter())
        return stamps

    one_pass(batches[:WARMUP_STEPS])
    stamps = one_pass(batches)
    intervals = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    samples = sum(len(x) for x, _ in batches)
    return samples / (stamps[-1] - stamps[0]), len(batches[0][0]) / statistics.median(intervals)


def paired_steps(p: experiment.Prepared, batches: list[Batch], n: int = 10) -> dict[str, float]:
    """Median ms of forward + loss + backward on the same batch and weights, biomx's way
    (`task.loss(model(x), padded targets)`) and MONAI's (`detector(x, box dicts)`), alternating
    step by step (no optimizer step); and of fetching one batch from the dataset (cut, pad)."""
    detector, model = detector_for(p)
    detector.train()
    data, size = p.datasets["train"], p.cfg.train.batch_size
    padded = [data.__getitems__(list(range(i * size, (i + 1) * size)))[1] for i in range(min(n, len(batches)))]
    times: dict[str, list[float]] = {"biomx": [], "ceiling": [], "fetch": []}
    for k in range(len(padded) + 1):
        x, targets = batches[k % len(padded)]
        y = padded[k % len(padded)]
        t0 = time.perf_counter()
        p.task.loss(model(x), y).backward()
        t1 = time.perf_counter()
        losses = detector(x, targets)
        (losses["classification"] + losses["box_regression"]).backward()
        t2 = time.perf_counter()
        data.__getitems__(list(range(size)))
        t3 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if k:  # the first pair warms up
            times["biomx"].append(t1 - t0)
            times["ceiling"].append(t2 - t1)
            times["fetch"].append(t3 - t2)
    return {f"{k}_ms": statistics.median(v) * 1e3 for k, v in times.items()}


def bench(dims: str, rounds: int, extra: list[str], profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="biomx-detbench-") as tmp:
        p = prepare(dims, Path(tmp), extra)
        batches = ceiling_batches(p)
        t, info = p.task, p.info["model"]["args"]
        print(f"\n{dims}: RetinaNet depth {info.get('depth')} width {info.get('width')} fpn {info.get('fpn_channels')}, "
              f"{t.num_anchors} anchor shapes, patch {t.patch_size}, batch {p.cfg.train.batch_size}, "
              f"{len(p.datasets['train'])} training patches/epoch ({len(batches)} steps), fp32 CPU, "
              f"{torch.get_num_threads()} threads", flush=True)  # fmt: skip
        biomx, ceiling, biomx_step, ceiling_step = [], [], [], []
        started = time.perf_counter()
        for r in range(rounds):
            rate, step_rate, _ = run_biomx(p)
            biomx.append(rate)
            biomx_step.append(step_rate)
            rate, step_rate = run_ceiling(p, batches)
            ceiling.append(rate)
            ceiling_step.append(step_rate)
            print(f"  round {r + 1}/{rounds}: biomx {biomx[-1]:7.1f} patches/s   ceiling {ceiling[-1]:7.1f} "
                  f"patches/s   ratio {biomx[-1] / ceiling[-1]:.2f}   (median step: {biomx_step[-1]:.1f} vs "
                  f"{ceiling_step[-1]:.1f})", flush=True)  # fmt: skip
        elapsed = time.perf_counter() - started
        paired = paired_steps(p, batches)
        print(f"  paired steps (forward + loss + backward, same batch): biomx {paired['biomx_ms']:.0f} ms, "
              f"MONAI detector {paired['ceiling_ms']:.0f} ms; fetching a batch: {paired['fetch_ms']:.1f} ms", flush=True)
        report = run_biomx(p, profile=True)[2] if profile else ""
    bm, cm = statistics.median(biomx), statistics.median(ceiling)
    step_ratio = statistics.median(biomx_step) / statistics.median(ceiling_step)
    paired_ratio = statistics.median(b / c for b, c in zip(biomx, ceiling, strict=True))
    noisy = max(biomx) > NOISY * min(biomx) or max(ceiling) > NOISY * min(ceiling)
    if report:
        print(report)
    return {"dims": dims, "model": info, "num_anchors": t.num_anchors, "patch_size": t.patch_size,
            "batch_size": p.cfg.train.batch_size, "steps": len(batches), "rounds": rounds,
            "biomx_patches_per_s": biomx, "ceiling_patches_per_s": ceiling, "biomx_median": bm,
            "ceiling_median": cm, "ratio": round(bm / cm, 4),
            "paired_ratio_median": round(paired_ratio, 4),
            "step_median_patches_per_s": {"biomx": biomx_step, "ceiling": ceiling_step},
            "step_median_ratio": round(step_ratio, 4), "paired_step_ms": paired, "noisy": noisy, "elapsed_s": elapsed}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", nargs="+", choices=("2d", "3d"), default=["2d", "3d"])
    parser.add_argument("--rounds", type=int, default=3, help="biomx/ceiling pairs per case (default 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides for both cases, e.g. task.patches_per_case=16")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 0: torch's default, one per core): see the README")
    parser.add_argument("--profile", action="store_true", help="then profile one biomx run (cProfile, tottime)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 0:
        parser.error("--rounds must be >= 1, --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.platform()}")
    results = [bench(d, args.rounds, args.overrides, args.profile) for d in args.dims]
    print("\n| case | biomx (patches/s) | ceiling (patches/s) | ratio of medians | median of round ratios "
          "| step-time ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['dims']} | {r['biomx_median']:.1f} ({min(r['biomx_patches_per_s']):.1f}-"
              f"{max(r['biomx_patches_per_s']):.1f}) | {r['ceiling_median']:.1f} ({min(r['ceiling_patches_per_s']):.1f}-"
              f"{max(r['ceiling_patches_per_s']):.1f}) | {r['ratio']:.2f} | {r['paired_ratio_median']:.2f} | "
              f"{r['step_median_ratio']:.2f} |")  # fmt: skip
        if r["noisy"]:
            print(f"  warning ({r['dims']}): rounds differ by more than {NOISY - 1:.0%}; the machine was busy")
    print("target: ratio >= 0.85")
    out = {"benchmark": "detection_throughput", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
           "overrides": args.overrides, "results": results}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
