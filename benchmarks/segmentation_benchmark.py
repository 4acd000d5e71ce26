"""3D segmentation training throughput (patches/s) from NIfTI files, three ways, in one run:

- ceiling: the model step alone, on patches already in memory as tensors;
- biomx:   NIfTI -> preprocessed once into the shared disk cache (memory maps) -> batched patch
           sampling (pos/neg) + batched augmentation -> the same model step;
- monai:   the idiomatic MONAI pipeline: CacheDataset (LoadImaged, EnsureChannelFirstd,
           Orientationd, Spacingd, ScaleIntensityRanged, CropForegroundd, SpatialPadd cached)
           + RandCropByPosNegLabeld, RandFlipd x3, RandRotate90d, RandScaleIntensityd,
           RandShiftIntensityd per sample + MONAI's DataLoader -> the same model step.

Same synthetic lesion CT volumes (real NIfTI files), same UNet, batch, patch size, pos/neg
ratio and augmentations. Each pipeline runs in its own process (fresh memory, its own peak RSS),
in alternating rounds; ratios are per round, reported as medians. "steady" = patches/s once
the pipeline is built; "run" = patches/s of a whole short training run including start-up
(building MONAI's CacheDataset; biomx's warm disk cache from an earlier run).

    python benchmarks/segmentation_benchmark.py                  # defaults: CPU-sized
    python benchmarks/segmentation_benchmark.py --device cuda --patch 96 --batch 8 --workers 8
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WINDOW = (-200.0, 200.0)


def _model(device: torch.device) -> torch.nn.Module:
    from biomx.models.registry import build_model

    return build_model("unet", in_channels=1, out_dim=2, spatial_dims=3, channels=[16, 32, 64, 128],
                       strides=[2, 2, 2], num_res_units=1).to(device)  # fmt: skip


def _train(loader, steps: int, device: torch.device, warmup: int = 3, model_step: bool = True) -> tuple[float, int]:
    """The one model step all three pipelines share; returns (seconds for `steps` steps, patches).

    model_step=False times the data path alone (batches moved to the device, no model): the
    throughput a pipeline would give a GPU fast enough never to wait."""
    from biomx.tasks.segmentation.task import build_segmentation_task

    torch.manual_seed(0)
    model = _model(device)
    task = build_segmentation_task(["background", "lesion"], "dice_ce")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    done, patches, started = 0, 0, None
    while done < steps + warmup:
        for x, y in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started, patches = time.perf_counter(), 0
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if model_step:
                loss = task.loss(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            patches += len(x)
            done += 1
            if done >= steps + warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, patches


def _biomx_config(data: Path, args) -> object:
    from biomx.config import validate

    return validate({
        "data": {"modality": "volume", "source": "msd", "path": str(data),
                 "split": {"method": "random", "val": 0.0, "test": 0.0},
                 "num_workers": args.workers,
                 "volume": {"spacing": [1.5, 1.5, 2.0], "intensity": "ct", "ct_window": list(WINDOW),
                            "augment": {"flip": 0.5, "rotate90": 0.5, "brightness": 0.1, "contrast": 0.1}}},
        "task": {"kind": "segmentation", "patch_size": [args.patch] * 3, "pos_ratio": 0.5, "patches_per_case": 8},
        "model": {"name": "unet", "args": {"channels": [16, 32, 64, 128], "strides": [2, 2, 2]}},
        "train": {"batch_size": args.batch, "progress": False},
    })  # fmt: skip


def _biomx_loader(data: Path, args):
    from torch.utils.data import DataLoader, RandomSampler

    from biomx.data.batching import collate_batch
    from biomx.experiment import prepare

    train = prepare(_biomx_config(data, args)).datasets["train"]
    sampler = RandomSampler(train, replacement=True, num_samples=10**9)
    return DataLoader(train, batch_size=args.batch, sampler=sampler, collate_fn=collate_batch,
                      num_workers=args.workers, persistent_workers=args.workers > 0,
                      pin_memory=args.device == "cuda")  # fmt: skip


def _monai_loader(data: Path, args):
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    files = [{"image": str(p), "label": str(data / "labelsTr" / p.name)}
             for p in sorted((data / "imagesTr").glob("*.nii.gz"))]  # fmt: skip
    per_volume = 2  # patches cut from each loaded volume; batch = batch / per_volume volumes
    transforms = Compose([
        LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=(1.5, 1.5, 2.0), mode=("bilinear", "nearest")),
        ScaleIntensityRanged("image", a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        CropForegroundd(keys, source_key="image"), SpatialPadd(keys, spatial_size=[args.patch] * 3),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=[args.patch] * 3, pos=1, neg=1,
                               num_samples=per_volume, image_key="image", image_threshold=0),
        RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2), RandRotate90d(keys, prob=0.5, max_k=3),
        RandScaleIntensityd("image", factors=0.1, prob=1.0), RandShiftIntensityd("image", offsets=0.1, prob=1.0),
    ])  # fmt: skip
    dataset = CacheDataset(files, transforms, cache_rate=1.0, num_workers=max(args.workers, 1), progress=False)
    loader = DataLoader(dataset, batch_size=max(args.batch // per_volume, 1), shuffle=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0,
                        pin_memory=args.device == "cuda")  # fmt: skip

    def batches():
        while True:
            for batch in loader:
                yield batch["image"].as_tensor(), batch["label"].as_tensor()[:, 0].long()

    return batches()


def _ceiling_loader(data: Path, args):
    """A fixed set of real patches (from the biomx pipeline), already stacked in memory."""
    loader = iter(_biomx_loader(data, args))
    fixed = [next(loader) for _ in range(8)]

    def batches():
        while True:
            yield from fixed

    return batches()


def run_one(pipeline: str, data: Path, args) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    loader = {"ceiling": _ceiling_loader, "biomx": _biomx_loader, "monai": _monai_loader}[pipeline](data, args)
    setup = time.perf_counter() - started
    seconds, patches = _train(loader, args.steps, device, model_step=not args.data_only)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pipeline": pipeline, "setup_s": setup, "steady": patches / seconds,
            "run": patches / (seconds + setup), "peak_rss_mb": peak_mb,
            "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", type=Path, default=None, help="an MSD folder (default: synthetic lesions)")
    parser.add_argument("--data-only", action="store_true",
                        help="time the data pipelines alone (no model step); the ceiling is then meaningless")
    parser.add_argument("--one", choices=["ceiling", "biomx", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()

    if args.one:  # a child process: one pipeline, results as JSON on stdout
        print(json.dumps(run_one(args.one, args.data, args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        data = args.data
        if data is None:
            from biomx.modalities.volume.lesions import write_lesion_dataset

            data = write_lesion_dataset(Path(tmp) / "lesions", n_cases=args.cases, seed=0,
                                        shape=tuple(args.shape)).parent  # fmt: skip
        env = {"BIOMX_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
        child = [sys.executable, __file__, "--data", str(data), "--patch", str(args.patch), "--batch",
                 str(args.batch), "--steps", str(args.steps), "--workers", str(args.workers), "--threads",
                 str(args.threads), "--device", args.device] + (["--data-only"] if args.data_only else [])  # fmt: skip

        def run(pipeline: str) -> dict:
            out = subprocess.run([*child, "--one", pipeline], env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{pipeline} failed:\n{out.stderr[-3000:]}")
            return json.loads(out.stdout.strip().splitlines()[-1])

        started = time.perf_counter()
        cold = run("biomx")  # fills the disk cache (what a first run pays)
        cold_s = time.perf_counter() - started
        rounds = []
        for r in range(args.rounds):
            order = ["ceiling", "biomx", "monai"] if r % 2 == 0 else ["monai", "biomx", "ceiling"]
            found = {name: run(name) for name in order}
            rounds.append(found)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v['steady']:.2f} patches/s" for k, v in found.items()),
                  flush=True)  # fmt: skip

    def median(f) -> float:
        return statistics.median(f(found) for found in rounds)

    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__, "device": args.device,
        "patches_per_s": {k: median(lambda f, k=k: f[k]["steady"]) for k in ("ceiling", "biomx", "monai")},
        "biomx_over_ceiling": median(lambda f: f["biomx"]["steady"] / f["ceiling"]["steady"]),
        "biomx_over_monai": median(lambda f: f["biomx"]["steady"] / f["monai"]["steady"]),
        "run_biomx_over_monai": median(lambda f: f["biomx"]["run"] / f["monai"]["run"]),
        "setup_s": {k: median(lambda f, k=k: f[k]["setup_s"]) for k in ("biomx", "monai")},
        "biomx_cold_setup_s": cold["setup_s"], "biomx_cold_process_s": cold_s,
        "peak_rss_mb": {k: median(lambda f, k=k: f[k]["peak_rss_mb"]) for k in ("ceiling", "biomx", "monai")},
        "peak_device_mb": {k: rounds[0][k]["peak_device_mb"] for k in ("ceiling", "biomx", "monai")},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
