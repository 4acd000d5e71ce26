"""Issue 19: a folder of 100,000 real chest X-ray files trains with a flat peak RSS when streamed.

1. Generate N image files from the real PneumoniaMNIST X-rays (28x28): each a random crop (side
   20-28 px, random offset) of one X-ray, resampled to --file-size px (bilinear), so every file
   differs; written as PNG, and a share (--dicom-share) as 8-bit DICOM secondary captures, in a
   folder per class. Kept under --root (default /tmp/biomx_large/n<N>) and reused.
2. Train 1 epoch of small_cnn on each folder in a fresh subprocess, through the real pipeline
   (`experiment.prepare`: hashing, loading, split, normalisation statistics, datasets; then the
   `Trainer` on the training split, no validation), and record the child's peak RSS
   (getrusage: the main process, and the largest DataLoader worker) and the Trainer's training
   images/s:
   - stream cold: `data.image.storage: stream`, an empty cache: the workers decode every file;
   - stream warm: the same again: every row comes from the row store;
   - memory: `storage: memory` (its cache entry written by a first, untimed run, then warm);
   - stream warm at --small N (default 10,000) as well, to show the peak RSS does not grow with N.
3. Print a table and write JSON (--json).

    .venv/bin/python benchmarks/large_images.py --n 100000            # the issue's benchmark
    .venv/bin/python benchmarks/large_images.py --n 10000 --small 2000  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

SHARED = Path("/work/shared/data/medmnist/pneumoniamnist.npz")
CLASSES = ("normal", "pneumonia")  # PneumoniaMNIST labels 0 and 1

# ---------------------------------------------------------------------------------- generation

_SOURCE: dict[str, np.ndarray] = {}


def _source_npz() -> Path:
    if SHARED.is_file():
        return SHARED
    from biomx.datasets import get_dataset

    return get_dataset("pneumoniamnist").path


def _init(path: str) -> None:
    with np.load(path) as z:
        _SOURCE["images"] = np.concatenate([z["train_images"], z["val_images"]])
        _SOURCE["labels"] = np.concatenate([z["train_labels"], z["val_labels"]])[:, 0]


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ConversionType, ds.PatientName, ds.PatientID = "CR", "WSD", "", ""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _write_chunk(job: tuple[str, int, int, int, float, int]) -> int:
    from PIL import Image

    root, start, stop, size, dicom_share, seed = job
    images, labels = _SOURCE["images"], _SOURCE["labels"]
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        k = int(rng.integers(len(images)))
        side = int(rng.integers(20, 29))
        y, x = (int(v) for v in rng.integers(0, 28 - side + 1, 2))
        crop = Image.fromarray(images[k][y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        stem = Path(root) / CLASSES[int(labels[k])] / f"{i:07d}"
        if rng.random() < dicom_share:
            _write_dicom(stem.with_suffix(".dcm"), np.asarray(crop))
        else:
            crop.save(stem.with_suffix(".png"))
    return stop - start


def generate(root: Path, n: int, size: int, dicom_share: float, workers: int, seed: int = 0) -> float:
    """Write the folder unless a complete one is there; seconds spent."""
    done = root / f".complete-{n}-{size}-{dicom_share}"
    if done.is_file():
        return 0.0
    shutil.rmtree(root, ignore_errors=True)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
    started = time.perf_counter()
    step = 2000
    jobs = [(str(root), a, min(a + step, n), size, dicom_share, seed) for a in range(0, n, step)]
    with Pool(workers, initializer=_init, initargs=(str(_source_npz()),)) as pool:
        written = sum(pool.imap_unordered(_write_chunk, jobs))
    assert written == n
    done.write_text("ok\n")
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------- one measurement


def _config(args: argparse.Namespace, storage: str, workers: int):  # noqa: ANN202
    from biomx.config import validate

    return validate({
        "name": "large-images",
        "data": {"modality": "image", "source": "folder", "path": str(args.root), "image": {
            "size": [args.size, args.size], "storage": storage}, "split": {"val": 0.05, "test": 0.05}},
        "model": {"name": "small_cnn", "args": {"width": args.width, "depth": 2}},
        "train": {"epochs": 1, "batch_size": args.batch_size, "num_workers": workers, "progress": False,
                  "device": "cpu", "seed": 0},
    })  # fmt: skip


def _epoch(p, cfg, steps: int, batch_size: int) -> tuple[int, float, float]:  # noqa: ANN001
    """One epoch over `steps` x `batch_size` seeded random training rows (0: the whole split):
    (rows, seconds, the Trainer's images/s)."""
    from torch.utils.data import Subset

    from biomx.data.batching import collate_batch
    from biomx.engine.runtime import seed_everything
    from biomx.engine.trainer import Trainer
    from biomx.models.registry import build_recorded

    train = p.datasets["train"]
    if steps:
        rows = np.random.default_rng(0).permutation(len(train))[: steps * batch_size]
        train = Subset(train, rows.tolist())
    seed_everything(0)
    trainer = Trainer(build_recorded(p.info["model"]), p.task.loss, train, settings=cfg.train,
                      run_dir=None, collate_fn=collate_batch, tensorboard=False)  # fmt: skip
    tick = time.perf_counter()
    history = trainer.fit()
    return len(train), time.perf_counter() - tick, float(history[-1]["samples_per_s"])


def child(args: argparse.Namespace) -> dict:
    """One training epoch in this (fresh) process; its peak RSS and throughput."""
    import torch

    from biomx.experiment import prepare

    cfg = _config(args, args.storage, args.workers)
    started = time.perf_counter()
    p = prepare(cfg)
    prepared = time.perf_counter() - started
    timed, epoch, per_s = _epoch(p, cfg, args.steps, args.batch_size)
    kind = type(p.data.inputs).__name__
    return {
        "storage": args.storage, "workers": args.workers, "n": len(p.data.ids), "timed_rows": timed,
        "inputs": kind, "prepare_s": round(prepared, 2), "epoch_s": round(epoch, 2), "images_per_s": round(per_s, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "worker_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def interleaved(args: argparse.Namespace) -> dict:
    """Warm throughput, the sides alternating in one process (stream with workers, stream without,
    memory), `--rounds` times: load from other processes on a shared machine hits every side."""
    from biomx.experiment import prepare

    sides = {"stream, 2 workers": ("stream", 2), "stream, 0 workers": ("stream", 0), "memory, 0 workers": ("memory", 0)}
    prepared = {name: (prepare(cfg), cfg) for name, (storage, workers) in sides.items()
                for cfg in [_config(args, storage, workers)]}  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for p, cfg in prepared.values():  # warm-up, untimed: kernel selection, page cache, the first workers
        _epoch(p, cfg, 3, args.batch_size)
    for _ in range(args.rounds):
        for name, (p, cfg) in prepared.items():
            rates[name].append(round(_epoch(p, cfg, args.ratio_steps, args.batch_size)[2], 1))
    medians = {name: float(np.median(r)) for name, r in rates.items()}
    memory = medians["memory, 0 workers"]
    return {"rounds": rates, "median_images_per_s": medians,
            "median_over_memory": {name: round(m / memory, 3) for name, m in medians.items()},
            "batch_read_ms": _batch_reads(prepared, args.batch_size, args.ratio_steps)}  # fmt: skip


def _batch_reads(prepared: dict, batch_size: int, steps: int, calls: int = 200) -> dict[str, float]:
    """Median ms of one training batch's `__getitems__` (rows read, float32, normalised) in this
    process, streamed vs in memory, interleaved call by call: the data path without the model."""
    datasets = {"stream": prepared["stream, 0 workers"][0].datasets["train"],
                "memory": prepared["memory, 0 workers"][0].datasets["train"]}  # fmt: skip
    rng = np.random.default_rng(1)
    warm = np.random.default_rng(0).permutation(len(datasets["memory"]))[: steps * batch_size]  # rows _epoch read
    times: dict[str, list[float]] = {name: [] for name in datasets}
    for _ in range(calls):
        batch = rng.choice(warm, batch_size, replace=False).tolist()
        for name, data in datasets.items():
            tick = time.perf_counter()
            data.__getitems__(batch)
            times[name].append((time.perf_counter() - tick) * 1000)
    return {name: round(float(np.median(t)), 3) for name, t in times.items()}


def measure(root: Path, storage: str, workers: int, cache: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--interleaved" if storage == "interleaved" else "--child", "--root", str(root), "--storage", storage, "--workers", str(workers),
           "--size", str(args.size), "--steps", str(args.steps), "--width", str(args.width),
           "--batch-size", str(args.batch_size), "--rounds", str(args.rounds),
           "--ratio-steps", str(args.ratio_steps)]  # fmt: skip
    env = {**os.environ, "BIOMX_CACHE": str(cache)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


# ---------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="images in the large folder")
    ap.add_argument("--small", type=int, default=10_000, help="images in the small folder (RSS against N)")
    ap.add_argument("--file-size", type=int, default=64, help="side of the generated files in pixels")
    ap.add_argument("--size", type=int, default=32, help="data.image.size: the side images are decoded to")
    ap.add_argument("--steps", type=int, default=100, help="training steps timed (0: one whole epoch)")
    ap.add_argument("--dicom-share", type=float, default=0.02, help="share of files written as DICOM")
    ap.add_argument("--base", type=Path, default=Path("/tmp/biomx_large"), help="folders and caches go here")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the streamed runs")
    ap.add_argument("--width", type=int, default=4, help="small_cnn width")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved warm rounds (stream/memory ratio)")
    ap.add_argument("--ratio-steps", type=int, default=40, help="steps per side and round of the interleaved rounds")
    ap.add_argument("--ratio-only", action="store_true", help="only the interleaved rounds (caches kept)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--interleaved", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--storage", default="stream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child or args.interleaved:
        print(json.dumps(child(args) if args.child else interleaved(args)))
        return
    gen_workers = max(1, min(4, os.cpu_count() or 1))
    roots = {n: args.base / f"n{n}" for n in (args.small, args.n)}
    seconds = {n: round(generate(root, n, args.file_size, args.dicom_share, gen_workers), 1) for n, root in roots.items()}
    print(f"generated: {seconds} s (0: reused)", flush=True)
    if args.generate_only:
        return
    big, small = roots[args.n], roots[args.small]
    caches = {name: args.base / f"cache-{name}" for name in ("stream", "memory", "small", "small-memory")}
    if args.ratio_only:  # the caches of an earlier full run, both warm: one cache folder serves both sides
        ratio = measure(big, "interleaved", 0, _merged(caches), args)
        print(json.dumps(ratio, indent=1))
        return
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    runs = {
        "stream cold": measure(big, "stream", args.workers, caches["stream"], args),
        "stream warm": measure(big, "stream", args.workers, caches["stream"], args),
        "stream warm, 0 workers": measure(big, "stream", 0, caches["stream"], args),
    }
    measure(big, "memory", 0, caches["memory"], args)  # decodes everything and writes the memory cache entry
    runs["memory (cache warm)"] = measure(big, "memory", 0, caches["memory"], args)
    measure(small, "stream", args.workers, caches["small"], args)  # fills the small folder's store
    runs[f"stream warm, N={args.small}"] = measure(small, "stream", args.workers, caches["small"], args)
    measure(small, "memory", 0, caches["small-memory"], args)
    runs[f"memory (cache warm), N={args.small}"] = measure(small, "memory", 0, caches["small-memory"], args)
    runs["interleaved"] = measure(big, "interleaved", 0, _merged(caches), args)
    report(runs, args)


def _merged(caches: dict[str, Path]) -> Path:
    """One cache folder holding the large folder's row store and its in-memory entry (links)."""
    merged = caches["stream"].parent / "cache-both"
    shutil.rmtree(merged, ignore_errors=True)
    merged.mkdir()
    for name in ("stream", "memory"):
        for sub in caches[name].iterdir():
            if not (merged / sub.name).exists():
                shutil.copytree(sub, merged / sub.name, symlinks=True, copy_function=os.link)
            else:
                for part in sub.iterdir():
                    if not (merged / sub.name / part.name).exists():
                        shutil.copytree(part, merged / sub.name / part.name, copy_function=os.link)
    return merged


def report(runs: dict[str, dict], args: argparse.Namespace) -> None:
    print(f"\n{'run':<34} {'N':>8} {'workers':>7} {'prepare s':>9} {'epoch s':>8} {'images/s':>9} "
          f"{'peak RSS MiB':>12} {'worker RSS MiB':>14}")  # fmt: skip
    for name, r in runs.items():
        if name == "interleaved":
            continue
        print(f"{name:<34} {r['n']:>8} {r['workers']:>7} {r['prepare_s']:>9} {r['epoch_s']:>8} "
              f"{r['images_per_s']:>9} {r['peak_rss_mib']:>12} {r['worker_peak_rss_mib']:>14}")  # fmt: skip
    memory = runs["memory (cache warm)"]["images_per_s"]
    ratios = {name: round(r["images_per_s"] / memory, 3) for name, r in runs.items() if name.startswith("stream warm")}
    ratios["interleaved rounds (medians)"] = runs["interleaved"]["median_over_memory"]
    small = runs[f"stream warm, N={args.small}"]["peak_rss_mib"]
    summary = {"warm_stream_over_memory": ratios, "target": 0.9,
               "peak_rss_stream_small_vs_large_mib": [small, runs["stream warm"]["peak_rss_mib"]],
               "peak_rss_memory_small_vs_large_mib": [runs[f"memory (cache warm), N={args.small}"]["peak_rss_mib"],
                                                      runs["memory (cache warm)"]["peak_rss_mib"]]}  # fmt: skip
    print("\n" + json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "summary": summary}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
