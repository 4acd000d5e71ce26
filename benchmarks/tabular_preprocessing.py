"""Tabular preprocessing time on a 100k-row table, cold (empty cache folder) against cached.

The table: scikit-survival's bundled GBSG2 (686 breast cancer patients, 5 numeric and 3
categorical columns, time and event), resampled with replacement to --rows rows, with 5% of
the feature cells blanked at random (so imputation and missingness indicators are exercised)
and a unique id per row. Written as CSV (and Parquet).

Timed, through the modality's own functions (what `biomx train` runs before the first epoch):
- parse: `table.load_parsed` (read the file, infer types, parse every cell, hash the file);
  cold = an empty cache folder, cached = the same call again (the parsed columns come from the
  on-disk cache, memory-mapped: numbers and int codes, never pickle);
- encode: fit the encoding on a 70% training split and transform all rows (done on every run:
  it depends on the split).
Each figure is the median of --repeats runs (a fresh cache folder for every cold run).

    .venv/bin/python benchmarks/tabular_preprocessing.py
    .venv/bin/python benchmarks/tabular_preprocessing.py --rows 20000 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_table(rows: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    from sksurv.datasets import load_gbsg2

    x, y = load_gbsg2()
    frame = x.copy()
    frame["time"], frame["event"] = y["time"], y["cens"].astype(int)
    rng = np.random.default_rng(seed)
    big = frame.iloc[rng.integers(0, len(frame), rows)].reset_index(drop=True)
    for column in x.columns:  # 5% missing per feature column
        big[column] = big[column].astype(object).where(rng.random(rows) >= 0.05, None)
    big.insert(0, "id", [f"r{i:07d}" for i in range(rows)])
    csv = folder / "gbsg2_big.csv"
    big.to_csv(csv, index=False)
    parquet = folder / "gbsg2_big.parquet"
    big.astype({c: str for c in ("horTh", "menostat", "tgrade")}).replace("None", None).to_parquet(parquet)
    return csv, parquet


def _config(path: Path, cache_dir: Path):
    from biomx.config import validate

    source = "parquet" if path.suffix == ".parquet" else "csv"
    return validate({"data": {"modality": "tabular", "source": source, "path": str(path), "label_column": ["time", "event"],
                              "tabular": {"id_column": "id", "cache_dir": str(cache_dir)}},
                     "task": {"kind": "regression"}}).data  # fmt: skip


def time_once(path: Path, root: Path, k: int) -> dict[str, float]:
    from biomx.modalities.common.table_encoding import fit, transform
    from biomx.modalities.tabular.table import load_parsed

    cfg = _config(path, root / f"cache{k}")
    t0 = time.perf_counter()
    parsed, _ = load_parsed(cfg)
    t1 = time.perf_counter()
    again, _ = load_parsed(cfg)
    t2 = time.perf_counter()
    assert again.meta.get("cached") and not parsed.meta.get("cached")
    train = np.random.default_rng(k).permutation(len(parsed.ids))[: int(0.7 * len(parsed.ids))]
    t3 = time.perf_counter()
    x = transform(again.values, fit(again.values, again.types, train, 1000))
    t4 = time.perf_counter()
    assert x.shape[0] == len(parsed.ids)
    return {"cold": t1 - t0, "cached": t2 - t1, "encode": t4 - t3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv, parquet = make_table(args.rows, root)
        print(f"{args.rows} rows, {csv.stat().st_size / 1e6:.1f} MB CSV, {parquet.stat().st_size / 1e6:.1f} MB Parquet")
        for path in (csv, parquet):
            runs = [time_once(path, root, k + (100 if path is parquet else 0)) for k in range(args.repeats)]
            med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            print(f"{path.suffix[1:]:8s} parse cold {med['cold']:.3f} s  cached {med['cached']:.3f} s "
                  f"({med['cold'] / med['cached']:.1f}x)  fit+transform {med['encode']:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
