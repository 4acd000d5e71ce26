"""MoleculeACE: biomx side by side with its peers on the 30 activity-cliff benchmark sets.

Every model trains on MoleculeACE's own train split and is scored on its test split: RMSE on all
test molecules and on the test activity-cliff compounds (`cliff_mol == 1`).

- `svm_ecfp`: MoleculeACE's SVM on ECFP, reproduced exactly: their featuriser (RDKit
  `GetMorganFingerprintAsBitVect(mol, 2, nBits=1024)` -> float array, as in
  `benchmark/featurization.py`) and scikit-learn's `SVR(**SVM_ECFP.yml)` with the dataset's
  tuned hyperparameters. Fitted on the whole train split; deterministic, so one seed (0).
- `chemprop`: chemprop 2's default D-MPNN through its CLI, from the separate venv that
  `benchmarks/chemprop_env.sh` creates (`chemprop train` with its defaults, regression, then
  `chemprop predict` on the test SMILES), per seed (`--data-seed`/`--pytorch-seed`).
- `biomx:<model>`: biomx configs through the Python API (`load_config` + `biomx.experiment.train`),
  per seed (`train.seed`), `data.split.method: predefined`.

The networks (chemprop, biomx fingerprint_mlp and dmpnn) hold out the same validation rows: for
seed s, a random 10% of the train split (numpy `default_rng(s)`), given to chemprop as a splits
column and to biomx as `val` rows of the predefined split. SVM-ECFP, the solver-fitted biomx
models and auto fit all training rows, as MoleculeACE does.

    bash benchmarks/chemprop_env.sh                                   # once: the chemprop venv
    .venv/bin/python benchmarks/moleculeace_benchmark.py              # all 30 sets, every model, seeds 0 1 2
    .venv/bin/python benchmarks/moleculeace_benchmark.py --peers svm_ecfp --biomx-models none
    nice -n 19 .venv/bin/python benchmarks/moleculeace_benchmark.py --peers chemprop --biomx-models none --resume
    .venv/bin/python benchmarks/moleculeace_benchmark.py --peers none --biomx-models fingerprint_mlp,dmpnn \\
        --seeds 0 --datasets CHEMBL2835_Ki CHEMBL1871_Ki --resume
    .venv/bin/python benchmarks/moleculeace_benchmark.py --table          # the Markdown table of the results

Results go to `benchmarks/results/moleculeace.json` (`--out`), rewritten atomically (under a file
lock, so several runs may share it) after every result: a killed run keeps what it had, and
`--resume` skips the entries already there. Needs MoleculeACE (its bundled data and configs,
installed without dependencies), scikit-learn and PyYAML; chemprop only in its own venv.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "moleculeace.json"
WORK = HERE / "results" / "work"  # per-run files (CSVs, chemprop and biomx runs); git-ignored
CHEMPROP = HERE / ".venv-chemprop" / "bin" / "chemprop"
PEERS = ("svm_ecfp", "chemprop")
BIOMX_MODELS = ("fingerprint_mlp", "dmpnn", "svm", "random_forest", "lightgbm", "auto")
VAL_FRACTION = 0.1
EPOCHS = 50  # chemprop 2's default; the biomx networks train as long


def moleculeace_dir() -> Path:
    """The installed MoleculeACE package (found without importing it: its imports need more)."""
    spec = importlib.util.find_spec("MoleculeACE")
    if spec is None or spec.origin is None:
        sys.exit("MoleculeACE is not installed: pip install --no-deps MoleculeACE")
    return Path(spec.origin).parent


def dataset_names() -> list[str]:
    return sorted(p.stem for p in (moleculeace_dir() / "Data" / "benchmark_data").glob("CHEMBL*.csv"))


def load_dataset(name: str) -> dict:
    """smiles, y, cliff (0/1) and split ('train'/'test') of one MoleculeACE set, in file order."""
    path = moleculeace_dir() / "Data" / "benchmark_data" / f"{name}.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"smiles": [r["smiles"] for r in rows], "y": np.array([float(r["y"]) for r in rows]),
            "cliff": np.array([int(r["cliff_mol"]) for r in rows]),
            "split": np.array([r["split"] for r in rows])}  # fmt: skip


def val_carve(split: np.ndarray, seed: int) -> np.ndarray:
    """train/val/test per row: a seeded random 10% of the train rows become val (every model alike)."""
    out = split.astype(object).copy()
    train = np.flatnonzero(split == "train")
    n_val = round(VAL_FRACTION * len(train))
    out[np.random.default_rng(seed).choice(train, size=n_val, replace=False)] = "val"
    return out.astype(str)


def rmse(pred: np.ndarray, true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, float) - np.asarray(true, float)) ** 2)))


def scores(pred: np.ndarray, data: dict, test: np.ndarray) -> dict:
    """RMSE on all test rows `test` (indices into the dataset) and on its cliff compounds."""
    true, cliff = data["y"][test], data["cliff"][test] == 1
    return {"rmse": rmse(pred, true), "rmse_cliff": rmse(pred[cliff], true[cliff]) if cliff.any() else None,
            "n_test": len(test), "n_test_cliff": int(cliff.sum())}  # fmt: skip


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------- results file


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"results": {}}


def record(path: Path, dataset: str, model: str, seed: int, entry: dict) -> None:
    """Merge one result into the file (re-read under the lock) and rewrite it atomically."""
    with locked(path):
        data = read_results(path)
        data.setdefault("results", {}).setdefault(dataset, {}).setdefault(model, {})[str(seed)] = entry
        data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)


def done(path: Path, dataset: str, model: str, seed: int) -> bool:
    return str(seed) in read_results(path)["results"].get(dataset, {}).get(model, {})


# ---------------------------------------------------------------------------------- SVM-ECFP


def ecfp(smiles: list[str]) -> np.ndarray:
    """MoleculeACE's `Featurizer.ecfp` (radius 2, 1024 bits, bit vector -> float64 numpy rows)."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem.AllChem import GetMorganFingerprintAsBitVect
    from rdkit.DataStructs import ConvertToNumpyArray

    RDLogger.DisableLog("rdApp.*")  # the deprecation warning of the old call, once per molecule
    rows = []
    for s in smiles:
        fp = GetMorganFingerprintAsBitVect(Chem.MolFromSmiles(s), 2, nBits=1024)
        arr = np.zeros((1,))
        ConvertToNumpyArray(fp, arr)
        rows.append(arr)
    return np.asarray(rows)


def run_svm_ecfp(name: str, data: dict, seed: int) -> dict:
    from sklearn.svm import SVR

    params = yaml.safe_load((moleculeace_dir() / "Data" / "configures" / "benchmark" / name / "SVM_ECFP.yml").read_text())
    train, test = np.flatnonzero(data["split"] == "train"), np.flatnonzero(data["split"] == "test")
    x = ecfp(data["smiles"])
    start = time.perf_counter()
    model = SVR(**params).fit(x[train], data["y"][train])
    seconds = time.perf_counter() - start
    return {**scores(model.predict(x[test]), data, test), "train_s": seconds, "n_train": len(train),
            "params": params}  # fmt: skip


# ---------------------------------------------------------------------------------- chemprop


def run_chemprop(name: str, data: dict, seed: int) -> dict:
    if not CHEMPROP.exists():
        raise RuntimeError(f"{CHEMPROP} is missing: run bash benchmarks/chemprop_env.sh")
    work = WORK / name / f"chemprop-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    split = val_carve(data["split"], seed)
    fit = np.flatnonzero(split != "test")
    test = np.flatnonzero(split == "test")
    # Train and val rows with a splits column; the test rows are chemprop's test split too.
    train_csv = write_csv(work / "data.csv", ["smiles", "y", "split"],
                          ((data["smiles"][i], data["y"][i], split[i]) for i in range(len(split))))  # fmt: skip
    test_csv = write_csv(work / "test.csv", ["smiles"], ([data["smiles"][i]] for i in test))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    log = open(work / "chemprop.log", "w")
    start = time.perf_counter()
    try:
        subprocess.run([str(CHEMPROP), "train", "-i", str(train_csv), "-s", "smiles", "--target-columns", "y",
                        "--splits-column", "split", "-t", "regression", "--data-seed", str(seed),
                        "--pytorch-seed", str(seed), "--num-workers", "0", "--accelerator", "cpu",
                        "--devices", "1", "-o", str(work / "model")],
                       check=True, stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        train_s = time.perf_counter() - start
        best = sorted((work / "model").rglob("best.pt"))
        if not best:
            raise RuntimeError(f"chemprop left no best.pt in {work / 'model'}")
        subprocess.run([str(CHEMPROP), "predict", "-i", str(test_csv), "-s", "smiles", "--model-paths", str(best[0]),
                        "--num-workers", "0", "--accelerator", "cpu", "--devices", "1", "-o", str(work / "preds.csv")],
                       check=True, stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    finally:
        log.close()
    seconds = time.perf_counter() - start
    with open(work / "preds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if [r["smiles"] for r in rows] != [data["smiles"][i] for i in test]:
        raise RuntimeError(f"{work / 'preds.csv'} does not list the test molecules in order")
    pred = np.array([float(r["y"]) for r in rows])
    shutil.rmtree(work / "model", ignore_errors=True)  # checkpoints: not needed once predicted
    return {**scores(pred, data, test), "train_s": seconds, "fit_s": train_s, "n_train": int((split == "train").sum()),
            "n_val": int((split == "val").sum()), "n_fit": len(fit)}  # fmt: skip


# ---------------------------------------------------------------------------------- biomx


def biomx_config(model: str) -> tuple[dict, dict, bool]:
    """(model section, data.molecule settings, whether it needs a validation split) of one biomx
    model on these sets. The networks early-stop on the val carve, as chemprop does; the
    solver-fitted models and auto (their inner cross-validation) fit the whole MoleculeACE
    training split, as MoleculeACE's SVM does."""
    if model == "fingerprint_mlp":
        return {"name": model}, {"features": ["morgan", "descriptors"]}, True
    if model == "dmpnn":
        return {"name": model}, {"features": []}, True
    return {"name": model}, {"features": ["morgan"], "morgan_counts": True}, False


def run_biomx(name: str, data: dict, seed: int, model: str) -> dict:
    from biomx.config import load_config
    from biomx.engine import logging as biomx_logging
    from biomx.experiment import train

    work = WORK / name / f"biomx-{model}-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    model_section, molecule, needs_val = biomx_config(model)
    split = val_carve(data["split"], seed) if needs_val else data["split"]
    ids = [f"m{i}" for i in range(len(split))]
    path = write_csv(work / "data.csv", ["id", "smiles", "y", "split"],
                     ((ids[i], data["smiles"][i], data["y"][i], split[i]) for i in range(len(split))))  # fmt: skip
    config = {
        "name": f"{name}-{model}",
        "data": {"modality": "molecule", "source": "csv", "path": str(path), "label_column": "y",
                 "molecule": {"smiles_column": "smiles", "id_column": "id", "cliffs": "off",
                              "cache_dir": str(WORK / "cache"), **molecule},
                 "split": {"method": "predefined", "column": "split", "val": 0.1 if needs_val else 0.0}},
        "model": model_section,
        "task": {"kind": "regression"},
        "train": {"epochs": EPOCHS, "batch_size": 50, "seed": seed, "device": "cpu", "progress": False,
                  "monitor": "val_rmse"},
        "eval": {"bootstrap": 0, "explain": 0},
        "output": {"dir": str(work), "name": "run", "tensorboard": False},
    }  # fmt: skip
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = load_config(work / "config.yaml")
    quiet = biomx_logging.console.quiet
    biomx_logging.console.quiet = True
    start = time.perf_counter()
    try:
        run = Path(train(cfg))
    finally:
        biomx_logging.console.quiet = quiet
    seconds = time.perf_counter() - start
    metrics = json.loads((run / "test_metrics.json").read_text())
    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pred_column = next(c for c in rows[0] if c.startswith("pred_") and not c.endswith("_std"))
    test = np.array([int(r["id"][1:]) for r in rows])
    if not (split[test] == "test").all():
        raise RuntimeError(f"{run / 'predictions_test.csv'} lists molecules outside the test split")
    result = scores(np.array([float(r[pred_column]) for r in rows]), data, test)
    result["rmse_biomx"] = metrics["metrics"]["rmse"]["value"]  # its own number: should equal rmse
    if abs(result["rmse_biomx"] - result["rmse"]) > 1e-4:
        print(f"  note: biomx's test_metrics rmse {result['rmse_biomx']:.4f} != recomputed {result['rmse']:.4f}")
    result["n_test_skipped"] = int((split == "test").sum()) - len(test)  # molecules biomx could not read
    for heavy in ("checkpoints", "members"):  # weights: not needed once scored
        shutil.rmtree(run / heavy, ignore_errors=True)
    return {**result, "train_s": seconds, "n_train": int((split == "train").sum()),
            "n_val": int((split == "val").sum())}  # fmt: skip


def biomx_available(model: str) -> bool:
    from biomx.models.registry import model_names

    if model in model_names():
        return True
    if model == "auto":  # a model.name, not a registered model: is the config accepted?
        from biomx.config import ConfigError, load_config

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = write_csv(Path(tmp) / "d.csv", ["smiles", "y", "split"], [["CCO", 1.0, "train"]])
                cfg = Path(tmp) / "c.yaml"
                cfg.write_text(yaml.safe_dump({"data": {"modality": "molecule", "source": "csv", "path": str(path),
                                                        "label_column": "y", "split": {"method": "predefined"}},
                                               "model": {"name": "auto"}, "task": {"kind": "regression"}}))  # fmt: skip
                load_config(cfg)
            return True
        except (ConfigError, ValueError):
            return False
    return False


# ---------------------------------------------------------------------------------- table


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(path: Path) -> str:
    results = read_results(path)["results"]
    models = [m for m in ("svm_ecfp", "chemprop") if any(m in r for r in results.values())]
    ours = {m for r in results.values() for m in r if m.startswith("biomx:")}
    models += sorted(ours, key=lambda m: (BIOMX_MODELS.index(m[6:]) if m[6:] in BIOMX_MODELS else 99, m))
    datasets = [d for d in dataset_names() if d in results]

    def means(model: str, key: str) -> dict[str, float]:
        out = {}
        for d in datasets:
            values = [e[key] for e in results[d].get(model, {}).values() if e.get(key) is not None]
            if values:
                out[d] = statistics.mean(values)
        return out

    lines = ["| dataset | n train / test (cliffs) | " + " | ".join(models) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in models) + " |"]  # fmt: skip
    for d in datasets:
        entry = next(iter(next(iter(results[d].values())).values()))
        cells = []
        for m in models:
            runs = list(results[d].get(m, {}).values())
            if not runs:
                cells.append("")
                continue
            mean, sd = mean_sd([e["rmse"] for e in runs])
            cliff = [e["rmse_cliff"] for e in runs if e.get("rmse_cliff") is not None]
            cell = f"{mean:.3f} ± {sd:.3f}" if len(runs) > 1 else f"{mean:.3f}"
            cell += f" ({statistics.mean(cliff):.3f})" if cliff else ""
            cells.append(cell + (f" [{len(runs)}]" if m != "svm_ecfp" else ""))
        n_train = entry["n_train"] + entry.get("n_val", 0)  # the whole train split
        lines.append(f"| {d} | {n_train} / {entry['n_test']} ({entry['n_test_cliff']}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: test RMSE, mean ± sd over seeds (cliff-compound RMSE in brackets), [seeds done].")
    lines.append("")
    for m in models:
        all_, cliff = means(m, "rmse"), means(m, "rmse_cliff")
        if all_:
            lines.append(f"- {m}: mean RMSE over {len(all_)} datasets {statistics.mean(all_.values()):.3f}, "
                         f"cliffs {statistics.mean(cliff.values()):.3f}")  # fmt: skip
    common = [d for d in datasets if all(d in means(m, "rmse") for m in models)]
    if common and len(models) > 1:
        lines.append(f"- on the {len(common)} datasets every model has: "
                     + ", ".join(f"{m} {statistics.mean(means(m, 'rmse')[d] for d in common):.3f}" for m in models))
    for m in models:
        if not m.startswith("biomx:"):
            continue
        ours = means(m, "rmse")
        for peer in ("svm_ecfp", "chemprop"):
            theirs = means(peer, "rmse")
            both = [d for d in ours if d in theirs]
            if both:
                wins = sum(ours[d] < theirs[d] for d in both)
                lines.append(f"- {m} vs {peer}: lower mean RMSE on {wins} of {len(both)} datasets")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main


def names(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    chosen = [] if value.strip() in ("", "none") else [v.strip() for v in value.split(",")]
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        sys.exit(f"{option}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", help="MoleculeACE sets, run in this order (default: all 30)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--peers", default="svm_ecfp,chemprop", help="comma list of svm_ecfp, chemprop, or none")
    parser.add_argument("--biomx-models", default="fingerprint_mlp,dmpnn,svm,random_forest,lightgbm",
                        help=f"comma list of {', '.join(BIOMX_MODELS)}, or none; unregistered ones are skipped")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--resume", action="store_true", help="skip the dataset/model/seed entries in --out")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --out and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return
    peers = names(args.peers, PEERS, "--peers")
    ours = names(args.biomx_models, BIOMX_MODELS, "--biomx-models")
    datasets = args.datasets or dataset_names()
    unknown = sorted(set(datasets) - set(dataset_names()))
    if unknown:
        sys.exit(f"--datasets: unknown {', '.join(unknown)}")
    if ours:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        missing = [m for m in ours if not biomx_available(m)]
        for m in missing:
            print(f"note: biomx model {m!r} is not registered here: skipped", flush=True)
        ours = [m for m in ours if m not in missing]
    runners = [(p, {"svm_ecfp": run_svm_ecfp, "chemprop": run_chemprop}[p]) for p in peers]
    runners += [(f"biomx:{m}", lambda n, d, s, m=m: run_biomx(n, d, s, m)) for m in ours]
    for name in datasets:
        data = load_dataset(name)
        for model, runner in runners:
            for seed in [0] if model == "svm_ecfp" else args.seeds:
                if args.resume and done(args.out, name, model, seed):
                    continue
                start = time.perf_counter()
                try:
                    entry = runner(name, data, seed)
                except Exception as error:  # one failed run must not end a night's benchmark
                    print(f"{name} {model} seed {seed}: FAILED after {time.perf_counter() - start:.0f} s: "
                          f"{type(error).__name__}: {error}", flush=True)  # fmt: skip
                    continue
                record(args.out, name, model, seed, entry)
                cliff = f"{entry['rmse_cliff']:.3f}" if entry["rmse_cliff"] is not None else "-"
                print(f"{name} {model} seed {seed}: RMSE {entry['rmse']:.3f}, cliffs {cliff} "
                      f"(n_train {entry['n_train']}, n_test {entry['n_test']}, {entry['train_s']:.1f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
