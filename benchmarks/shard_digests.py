"""How much reading and hashing a shard set's samples in threads saves (`shards.sample_digests`).

A run that trains from `data.source: shards` reads every sample's bytes once to key its cache and
check for duplicates. This packs N real chest X-ray files (`large_images.generate`: crops of the
PneumoniaMNIST X-rays resampled to --file-size px, PNG) into shards, then times
`sample_digests(index, threads=1)` against `threads=T` alternately (--rounds, medians) with the
files in the page cache: the ratio is the speed-up on this machine's cores. A shared filesystem's
latency would add to both, and threads overlap it, so this understates the gain there.

    .venv/bin/python benchmarks/shard_digests.py --n 4000 --file-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from biomx.data.shard_cli import source_samples  # noqa: E402
from biomx.data.shard_writer import write_shards  # noqa: E402
from biomx.data.shards import read_index, sample_digests  # noqa: E402
from large_images import generate  # noqa: E402


def timed(index, threads: int) -> tuple[float, list[str]]:  # noqa: ANN001
    started = time.perf_counter()
    digests = sample_digests(index, threads=threads)
    return time.perf_counter() - started, digests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--file-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="default: one per core, at most 8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--root", type=Path, default=Path("/tmp/biomx_shard_digests"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    folder, shards = args.root / f"files-{args.n}-{args.file_size}", args.root / f"shards-{args.n}-{args.file_size}"
    generate(folder, args.n, args.file_size, dicom_share=0.0, workers=2)
    if not (shards / "index.json").is_file():
        samples, meta, _ = source_samples(folder)
        write_shards(samples, shards, meta=meta)
    index = read_index(shards)
    megabytes = sum(s.size for s in index.shards) / 2**20
    threads = args.threads or min(8, os.cpu_count() or 1)
    timed(index, 1)  # warm the page cache
    one, many = [], []
    for _ in range(args.rounds):
        t1, d1 = timed(index, 1)
        tn, dn = timed(index, threads)
        assert d1 == dn  # the same digests, in the same order
        one.append(t1)
        many.append(tn)
    result = {"n": len(index), "file_size_px": args.file_size, "megabytes": round(megabytes, 1), "threads": threads,
              "seconds_1_thread": round(statistics.median(one), 3), "seconds_threads": round(statistics.median(many), 3),
              "speedup": round(statistics.median(one) / statistics.median(many), 2)}  # fmt: skip
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
