"""Detection: sliding-window inference time and peak memory on a whole 512 x 512 x 256 volume.

The entry point is the detection task's whole-scan inference, `biomx.tasks.detection.inference.
detect_image` (what `biomx predict` and the test evaluation call on each preprocessed scan): every
window through the model in batches of `sw_batch_size`, each batch decoded on its own
(`DetectionTask.detect`: score threshold, per-window NMS), only the boxes kept, then the boxes of
all windows fused (NMS). A tiny 3D RetinaNet (ResNet-10, width 8, FPN 16, untrained: the point is
time and memory, not boxes) on a synthetic float32 volume (noise plus bright blobs).

Each measurement runs in a fresh subprocess and reports its own peak resident set size from
the moment the volume is made (VmHWM after resetting it through /proc/self/clear_refs; else
`getrusage` ru_maxrss), its resident size just before (torch, biomx and the model loaded and run
once: the baseline), its wall time and CPU time (CPU time is the steadier number on a shared machine):

- volume:   the volume allocated and filled, nothing else (its own footprint);
- sliding:  the volume + `detect_image` over it;
- one-shot: the volume + the same model on the whole volume in one forward pass + decoding its
  output (what inference without windows needs), at `--oneshot-scale` of each side (default 1:
  the whole volume) and, below 1, scaled to the full size by the voxel count (activations grow
  linearly with it).

    nice -n 10 .venv/bin/python benchmarks/detection_inference.py [--size 512 512 256] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "detection_inference.json"
MiB = 2**20


def rss_now() -> int:
    """Current resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: writing 5 to clear_refs), so the peak read later
    is that of what follows, not of imports and warm-up; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes since the last `reset_peak` (VmHWM), else since start."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def synthetic_volume(shape: list[int], seed: int = 0) -> Any:
    """(1, *shape) float32: standard normal noise with 40 bright ellipsoids-as-cubes (lesion-like)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    volume = rng.standard_normal((1, *shape), dtype=np.float32)
    for _ in range(40):
        size = rng.integers(4, 16, 3)
        start = [int(rng.integers(0, max(n - s, 1))) for n, s in zip(shape, size, strict=True)]
        volume[(0, *(slice(a, a + s) for a, s in zip(start, size, strict=True)))] += 3.0
    return volume


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process; the result as a dict."""
    import torch

    from biomx.models.registry import build_model
    from biomx.tasks.detection.inference import detect_image
    from biomx.tasks.detection.task import build_detection_task

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    patch = [args.patch] * 3
    shapes = [[6.0, 6.0, 3.0], [10.0, 10.0, 5.0], [16.0, 16.0, 8.0]]
    model = build_model("retinanet", in_channels=1, out_dim=1, spatial_dims=3, anchor_shapes=shapes, depth=10,
                        width=args.width, fpn_channels=args.fpn, returned_layers=[1, 2]).eval()  # fmt: skip
    task = build_detection_task(["lesion"], 3, len(shapes), patch, score_threshold=args.score_threshold)
    pre = {"patch_size": patch, "overlap": args.overlap, "sw_batch_size": args.sw_batch_size}
    with torch.inference_mode():  # one window first: oneDNN primitives and allocator pools, as a served model
        model(torch.zeros(1, 1, *patch))
    shape = list(args.size)
    if args.child == "oneshot":
        shape = [max(args.patch, int(round(n * args.oneshot_scale / 16)) * 16) for n in shape]
    baseline, reset = rss_now(), reset_peak()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    volume = synthetic_volume(shape)
    out: dict[str, Any] = {"mode": args.child, "shape": shape, "volume_bytes": volume.nbytes, "baseline_rss": baseline}
    started = time.perf_counter()
    if args.child == "sliding":
        boxes, scores, _ = detect_image([model], task, volume, pre, torch.device("cpu"))
        out.update(boxes=len(boxes), max_score=float(scores.max()) if len(scores) else None)
    elif args.child == "oneshot":
        with torch.inference_mode():
            outputs = model(torch.from_numpy(volume)[None])
            found = task.detect(outputs, shape)
        out.update(boxes=len(found[0][0]), output_bytes=outputs.numel() * outputs.element_size())
        del outputs
    out["seconds"] = time.perf_counter() - started
    now = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime
    out["peak_since_baseline"] = reset
    out["peak_rss"] = peak_rss()
    from biomx.engine.sliding_window import window_starts

    out["windows"] = len(window_starts(shape, patch, args.overlap)) if args.child == "sliding" else None
    return out


def measure(mode: str, argv: list[str]) -> dict[str, Any]:
    """Run `mode` in a subprocess (its own peak RSS), return its result."""
    result = subprocess.run([sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 256], metavar=("X", "Y", "Z"),
                        help="volume size in voxels (default 512 512 256)")  # fmt: skip
    parser.add_argument("--patch", type=int, default=64, help="window side, a multiple of 16 (default 64)")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap (default 0.25)")
    parser.add_argument("--sw-batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--width", type=int, default=8, help="ResNet-10 width (default 8)")
    parser.add_argument("--fpn", type=int, default=16, help="FPN channels (default 16)")
    parser.add_argument("--score-threshold", type=float, default=0.05, help="task.score_threshold (default 0.05)")
    parser.add_argument("--oneshot-scale", type=float, default=1.0,
                        help="one-shot inference on this fraction of each side, then scaled up by the "
                             "voxel count (default 1: the whole volume; 0.5: 1/8 of it)")
    parser.add_argument("--skip-oneshot", action="store_true", help="measure sliding windows only")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1; 0: torch's default): see benchmarks/README.md")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    parser.add_argument("--child", choices=("volume", "sliding", "oneshot"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.patch % 16 or any(n < args.patch for n in args.size) or not 0 < args.oneshot_scale <= 1:
        parser.error("--patch must divide by 16 and fit in --size; --oneshot-scale in (0, 1]")
    if args.child:
        print(json.dumps(child(args)))
        return None
    passed = list(argv if argv is not None else sys.argv[1:])
    modes = ["volume", "sliding"] + ([] if args.skip_oneshot else ["oneshot"])
    results = {}
    for mode in modes:
        results[mode] = r = measure(mode, passed)
        above = (r["peak_rss"] - r["baseline_rss"]) / MiB
        print(f"{mode:8s} {'x'.join(map(str, r['shape'])):>12s}: {r['seconds']:7.1f} s ({r['cpu_seconds']:.1f} s CPU), peak RSS "
              f"{r['peak_rss'] / MiB:7.0f} MiB ({above:+7.0f} MiB over the {r['baseline_rss'] / MiB:.0f} MiB baseline)"
              + (f", {r['windows']} windows" if r.get("windows") else "")
              + (f", {r['boxes']} boxes" if r.get("boxes") is not None else ""), flush=True)  # fmt: skip
    volume_mib = results["volume"]["volume_bytes"] / MiB
    summary = {"volume_mib": volume_mib,
               "sliding_over_baseline_mib": (results["sliding"]["peak_rss"] - results["sliding"]["baseline_rss"]) / MiB,
               "sliding_seconds": results["sliding"]["seconds"], "sliding_cpu_seconds": results["sliding"]["cpu_seconds"]}  # fmt: skip
    summary["sliding_extra_mib"] = summary["sliding_over_baseline_mib"] - (
        results["volume"]["peak_rss"] - results["volume"]["baseline_rss"]) / MiB  # fmt: skip
    if "oneshot" in results:
        r = results["oneshot"]
        factor = (results["volume"]["volume_bytes"] / r["volume_bytes"])
        measured = (r["peak_rss"] - r["baseline_rss"]) / MiB
        summary.update(oneshot_over_baseline_mib=measured * factor, oneshot_scaled_by=factor,
                       oneshot_seconds=r["seconds"] * factor, oneshot_cpu_seconds=r["cpu_seconds"] * factor)  # fmt: skip
    print(f"\n| {'x'.join(map(str, args.size))} float32 volume | MiB |\n|---|---:|")
    print(f"| the volume itself | {volume_mib:.0f} |")
    print(f"| sliding windows: peak over baseline | {summary['sliding_over_baseline_mib']:.0f} |")
    print(f"| sliding windows: beyond the volume | {summary['sliding_extra_mib']:.0f} |")
    if "oneshot_over_baseline_mib" in summary:
        note = "" if summary["oneshot_scaled_by"] == 1 else f" (x{summary['oneshot_scaled_by']:.0f} from a smaller volume)"
        print(f"| one-shot: peak over baseline{note} | {summary['oneshot_over_baseline_mib']:.0f} |")
    out = {"benchmark": "detection_inference", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
           "config": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
           "results": results, "summary": summary}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # imported here: the measured child processes import biomx late, after their baseline
    from biomx.engine.checkpoint import atomic_write_text

    atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
