"""Survival accuracy on GBSG2: biomx's networks against a tree ensemble and a classical Cox model,
on the same splits and scored by the same code.

    .venv/bin/python benchmarks/survival_baselines.py [--seeds 0 1 2] [--epochs 40] [--json out.json]

For each split seed s:

1. `biomx train examples/gbsg2_survival.yaml` (DeepSurv-style MLP, width 64, depth 2) twice, with
   `task.model=cox` and `task.model=logistic_hazard`, `data.split.seed=s`, `train.seed=s`
   (stratified 70/15/15; the best epoch on val_c_index is restored). The network's test numbers
   are read from the run's own test_metrics.json.
2. The run's split.csv (id, label, split) gives the training and test rows. On the training rows
   only (not val: the networks do not train on it either), fitted on the raw table:
   - scikit-survival `GradientBoostingSurvivalAnalysis` (Cox loss, 100 trees of depth 3,
     learning rate 0.1: its defaults) and `RandomSurvivalForest` (500 trees, min 15 samples per
     leaf);
   - lifelines `CoxPHFitter(penalizer=0.01)`;
   on the same features: the 5 numeric columns with median imputation fitted on the training rows
   (GBSG2 has no missing values; the imputation is there so that the recipe is the usual one),
   and the 3 categoricals one-hot encoded with the training rows' levels, first level dropped
   (reference coding: a full one-hot is collinear with the Cox baseline hazard).
3. Every baseline is scored on the run's test rows with `biomx.tasks.survival.scoring.score`, the
   function behind the network's own numbers (Harrell's C, Uno's C with tau = the run's tau,
   IBS on the run's grid, censoring weights from the training split), so that the columns differ
   only in the model. The script checks that it rebuilds the run's grid exactly.

test_metrics.json also carries the lifelines Cox model biomx's report fits on its own encoded
features ("report CoxPH"); it is listed as a cross-check of the lifelines row (biomx encodes each
categorical as one integer level code there, not one-hot).

The biomx runs are subprocesses with OMP_NUM_THREADS=1: on a 2-core machine shared with other
work, torch's two intra-op threads on this tiny MLP wait for each other and a 12 s run takes 40 s
or more (see "Threads" under tabular_throughput.py in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from biomx.tasks.survival.metrics import Censoring, concordance
from biomx.tasks.survival.scoring import ibs_grid, score

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gbsg2_survival.yaml"
NUMERIC = ["age", "estrec", "pnodes", "progrec", "tsize"]
CATEGORICAL = ["horTh", "menostat", "tgrade"]
METRICS = ["c_index", "uno_c", "ibs"]
NETWORKS = ["cox", "logistic_hazard"]
PENALIZER = 0.01

SurvivalFn = Callable[[np.ndarray], np.ndarray]  # times (T,) -> S(t | x) of the test rows, (N, T)


def export(folder: Path) -> Path:
    """GBSG2 exactly as a user gets it (`biomx datasets --name gbsg2 --export DIR`)."""
    subprocess.run([sys.executable, "-m", "biomx", "datasets", "--name", "gbsg2", "--export", str(folder)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return folder / "gbsg2.csv"


def train_biomx(table: Path, runs: Path, model: str, seed: int, epochs: int) -> tuple[Path, float]:
    """(the run directory, wall seconds) of one `biomx train` of the example."""
    out = runs / f"{model}_{seed}"
    sets = [f"data.path={table}", f"output.dir={out}", f"task.model={model}", f"data.split.seed={seed}",
            f"train.seed={seed}", f"train.epochs={epochs}", "train.progress=false", "train.device=cpu",
            "data.tabular.cache=false",
            # Point estimates only: the bootstrap and the explanations cost time and change no number here.
            "eval.bootstrap=0", "eval.explain=0"]  # fmt: skip
    cmd = [sys.executable, "-m", "biomx", "train", str(EXAMPLE)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # why: see the module docstring
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"biomx train failed ({model}, seed {seed}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]  # one run per fresh output.dir
    return run_dir, time.perf_counter() - started


def read_split(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "split.csv", newline="") as f:
        return {row["id"]: row["split"] for row in csv.DictReader(f)}


def check_rows(run_dir: Path, evaluation: dict, split: dict[str, str], seed: int) -> None:
    """The run's test predictions are split.csv's test rows, and Harrell's C recomputed from them
    here is the run's: the baselines below are then scored on the same rows by the same code."""
    pred = pd.read_csv(run_dir / "predictions_test.csv", dtype={"id": str})
    if set(pred["id"]) != {i for i, s in split.items() if s == "test"}:
        raise SystemExit(f"seed {seed}: predictions_test.csv and split.csv name different test rows")
    c = concordance(pred["time"].to_numpy(np.float64), pred["event"].to_numpy(np.float64),
                    pred["risk"].to_numpy(np.float64))  # fmt: skip
    # predictions_test.csv rounds the risk to 6 decimals: a near-tie may flip, hence the tolerance.
    if abs(c - evaluation["metrics"]["c_index"]["value"]) > 1e-3:
        raise SystemExit(f"seed {seed}: C from predictions_test.csv {c:.4f} is not the run's")


def encode(frame: pd.DataFrame, train: np.ndarray) -> np.ndarray:
    """Median-imputed numerics and reference-coded one-hot categoricals, both fitted on `train`."""
    numeric = frame[NUMERIC].astype(float)
    numeric = numeric.fillna(numeric[train].median())
    blocks = [numeric.to_numpy()]
    for column in CATEGORICAL:
        levels = sorted(frame.loc[train, column].dropna().astype(str).unique())
        values = frame[column].astype(str).to_numpy()
        # Level 0 is the reference; an unseen or missing level codes as the reference too.
        blocks.append(np.stack([values == level for level in levels[1:]], axis=1).astype(float))
    return np.concatenate(blocks, axis=1)


def step_survival(functions: list, times: np.ndarray) -> np.ndarray:
    """sksurv StepFunctions evaluated at `times`: 1 before their first time, constant after their
    last (sksurv raises outside its domain; the grid and horizons can reach past the last event)."""
    out = np.empty((len(functions), len(times)))
    for k, f in enumerate(functions):
        out[k] = np.where(times < f.x[0], 1.0, f(np.clip(times, f.x[0], f.x[-1])))
    return out


def fit_trees(x_train: np.ndarray, time_: np.ndarray, event: np.ndarray, x_test: np.ndarray,
              seed: int) -> dict[str, tuple[np.ndarray, SurvivalFn]]:
    from sksurv.ensemble import GradientBoostingSurvivalAnalysis, RandomSurvivalForest
    from sksurv.util import Surv

    y = Surv.from_arrays(event > 0.5, time_)
    out = {}
    for name, model in [
        ("sksurv GradientBoosting", GradientBoostingSurvivalAnalysis(random_state=seed)),
        ("sksurv RandomSurvivalForest",
         RandomSurvivalForest(n_estimators=500, min_samples_leaf=15, n_jobs=2, random_state=seed)),
    ]:  # fmt: skip
        model.fit(x_train, y)
        functions = model.predict_survival_function(x_test)
        out[name] = (np.asarray(model.predict(x_test), dtype=np.float64),
                     lambda t, fs=functions: step_survival(fs, t))  # fmt: skip
    return out


def fit_lifelines(x_train: np.ndarray, time_: np.ndarray, event: np.ndarray,
                  x_test: np.ndarray) -> tuple[np.ndarray, SurvivalFn]:
    from lifelines import CoxPHFitter

    columns = [f"x{k}" for k in range(x_train.shape[1])]
    frame = pd.DataFrame(x_train, columns=columns).assign(time=time_, event=(event > 0.5).astype(int))
    model = CoxPHFitter(penalizer=PENALIZER)
    with warnings.catch_warnings():  # lifelines' convergence chatter, not an error
        warnings.simplefilter("ignore")
        model.fit(frame, duration_col="time", event_col="event")
    test = pd.DataFrame(x_test, columns=columns)
    risk = np.log(np.asarray(model.predict_partial_hazard(test), dtype=np.float64))

    def survival(t: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_survival_function(test, times=t), dtype=np.float64).T

    return risk, survival


def one_seed(table: Path, runs: Path, seed: int, epochs: int) -> tuple[dict[str, dict[str, float]], dict]:
    """{model: {metric: value}} on this seed's split, and what the log shows about it."""
    results: dict[str, dict[str, float]] = {}
    log: dict = {"train_s": {}}
    split: dict[str, str] | None = None
    evaluation: dict = {}
    for model in NETWORKS:
        run_dir, seconds = train_biomx(table, runs, model, seed, epochs)
        log["train_s"][model] = seconds
        this = read_split(run_dir)
        # The split depends on data.split.seed only; the baselines below rely on that.
        if split is not None and this != split:
            raise SystemExit(f"seed {seed}: the cox and logistic_hazard runs have different splits")
        split = this
        evaluation = json.loads((run_dir / "test_metrics.json").read_text())
        check_rows(run_dir, evaluation, this, seed)
        results[f"biomx {model}"] = {m: evaluation["metrics"][m]["value"] for m in METRICS}
    results["report CoxPH (biomx encoding)"] = {m: evaluation["cox_ph"]["metrics"][m]["value"] for m in METRICS}
    assert split is not None

    frame = pd.read_csv(table)
    which = frame["id"].astype(str).map(split).to_numpy()
    train, test = which == "train", which == "test"
    t_all, e_all = frame["time"].to_numpy(np.float64), frame["event"].to_numpy(np.float64)
    t_train, e_train, t_test, e_test = t_all[train], e_all[train], t_all[test], e_all[test]
    if test.sum() != evaluation["n"] or e_test.sum() != evaluation["n_events"]:
        raise SystemExit(f"seed {seed}: test rows differ from the run's ({test.sum()} vs {evaluation['n']})")
    grid = ibs_grid(t_test, t_train)
    if not np.allclose(grid, evaluation["grid"]):  # same rows, same grid: else the IBS is not comparable
        raise SystemExit(f"seed {seed}: the Brier grid differs from the run's")
    horizons, tau = np.asarray(evaluation["horizons"], dtype=np.float64), float(evaluation["tau"])
    censoring = Censoring(t_train, e_train)

    x = encode(frame, train)
    fitted = fit_trees(x[train], t_train, e_train, x[test], seed)
    fitted["lifelines CoxPH (one-hot)"] = fit_lifelines(x[train], t_train, e_train, x[test])
    for name, (risk, survival) in fitted.items():
        values = score(t_test, e_test, risk, survival(grid), survival(horizons), grid, horizons, censoring, tau)
        results[name] = dict(zip(METRICS, values[: len(METRICS)], strict=True))
    log.update(n_train=int(train.sum()), n_test=int(test.sum()), test_events=int(e_test.sum()))
    return results, log


def table(per_seed: dict[int, dict[str, dict[str, float]]]) -> str:
    seeds = sorted(per_seed)
    models = list(per_seed[seeds[0]])
    lines = ["| model | Harrell C mean (sd) | per seed | Uno C mean (sd) | IBS mean (sd) | per seed |",
             "| --- | ---: | --- | ---: | ---: | --- |"]  # fmt: skip

    def cell(model: str, metric: str) -> tuple[str, str]:
        values = [per_seed[s][model][metric] for s in seeds]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ({sd:.3f})", " ".join(f"{v:.3f}" for v in values)

    for model in models:
        c, c_seeds = cell(model, "c_index")
        uno, _ = cell(model, "uno_c")
        ibs, ibs_seeds = cell(model, "ibs")
        lines.append(f"| {model} | {c} | {c_seeds} | {uno} | {ibs} | {ibs_seeds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, default=40, help="biomx training epochs (default 40, the example's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    logs: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = export(Path(tmp) / "data")
        for seed in args.seeds:
            per_seed[seed], logs[seed] = one_seed(data, Path(tmp) / "runs", seed, args.epochs)
            log = logs[seed]
            print(f"seed {seed}: {log['n_train']} train / {log['n_test']} test rows ({log['test_events']} events); "
                  f"biomx train " + ", ".join(f"{m} {s:.0f} s" for m, s in log["train_s"].items()), flush=True)
            for model, values in per_seed[seed].items():
                print(f"  {model:32s} " + "  ".join(f"{m} {v:.3f}" for m, v in values.items()), flush=True)
    print(f"\nGBSG2, {args.epochs} epochs, split seeds {' '.join(map(str, args.seeds))}:\n")
    print(table(per_seed))
    elapsed = time.perf_counter() - started
    print(f"\n[{elapsed:.0f} s]")
    results = {"epochs": args.epochs, "seeds": args.seeds, "per_seed": per_seed, "log": logs, "elapsed_s": elapsed}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
