"""From scratch vs fine-tuned (vs tuned) on BreastMNIST and RetinaMNIST, several seeds, one fixed split.

    python benchmarks/medmnist_transfer.py                      # everything, 3 seeds
    python benchmarks/medmnist_transfer.py --datasets breastmnist --seeds 2 --tune-trials 0

Why: issue 19 asks whether pre-training on chest X-rays helps the two small MedMNIST sets, and
whether biomx gets above MedMNIST v2's published test numbers (BreastMNIST AUC 0.919 / ACC 0.863,
RetinaMNIST AUC 0.750 / ACC 0.531, the best of ResNet-18 (28 px) and AutoML Vision).

Steps (each a normal `biomx train` / `biomx tune` run under --out; a finished run is reused, so an
interrupted benchmark continues where it stopped):

1. the parent: benchmarks/medmnist_transfer/pretrain_pneumonia.yaml (ResNet-18 on the shared
   PneumoniaMNIST copy, 64 px, 3 channels);
2. per dataset (benchmarks/medmnist_transfer/<dataset>.yaml) and seed (train.seed = 0..S-1):
   `scratch` (the config as is) and `finetuned` (model.init_from = the parent, model.reinit: [head],
   every layer trained);
3. with --tune-trials N: `biomx tune` over the fine-tuned config's lr, weight decay, augmentation,
   epochs and label smoothing (seed 0, scored on the validation split only), then `tuned`: its
   best_config.yaml trained with every seed (seed 0: the best trial's own run, trained with
   train.seed 0 already);
4. with --ensemble K: `tuned` (else `finetuned`) as a deep ensemble of K members, seed 0 only.

The split is the same for every run: data.split {method: predefined, test: 0.15, seed: 0}: the
shared copies hold only the official train and val splits, so test = a stratified 15% of the
official training split, val = the official validation split. Metrics as MedMNIST defines them:
AUC = ROC AUC (macro one-vs-rest over the 5 grades for RetinaMNIST), ACC = accuracy of the
arg-max class (threshold 0.5 for binary), read from each run's test_metrics.json.

Writes --out/medmnist_transfer.json (every run's numbers, the commit, the date) and
--out/medmnist_transfer.md (mean ± sd per dataset and arm).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "medmnist_transfer"
ROOT = HERE.parent.parent
TARGETS = {"breastmnist": {"auroc": 0.919, "accuracy": 0.863}, "retinamnist": {"auroc": 0.750, "accuracy": 0.531}}
TUNE_SPACE = {
    "train.optimizer.lr": {"log_uniform": [1.0e-4, 3.0e-3]},
    "train.optimizer.weight_decay": {"log_uniform": [1.0e-3, 0.2]},
    "train.epochs": {"int": [8, 20]},
    "task.label_smoothing": {"uniform": [0.0, 0.15]},
    "data.image.augment.rotate": {"int": [0, 20]},
    "data.image.augment.translate": {"uniform": [0.0, 0.12]},
}


def biomx(*args: str, log: Path) -> None:
    """One `biomx` command in a child process (its own threads; the log keeps its output)."""
    cmd = [str(Path(sys.executable).with_name("biomx")), *args]
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log}")


def train(config: Path, out: Path, name: str, sets: list[str]) -> Path:
    """`biomx train` into out/name unless that run already finished (its test_metrics.json)."""
    run = out / name
    if not (run / "test_metrics.json").is_file():
        if run.exists():
            raise SystemExit(f"{run}: an unfinished run; remove it or resume it (biomx train --resume {run})")
        print(f"train {name}", flush=True)
        biomx("train", str(config), "--set", f"output.dir={out}", "--set", f"output.name={name}", *sum(
            (["--set", s] for s in sets), []), log=out / f"{name}.log")  # fmt: skip
    return run


def test_numbers(run: Path) -> dict[str, Any]:
    """AUC and ACC (and n) from a run's test_metrics.json, plus the epochs it trained."""
    metrics = json.loads((run / "test_metrics.json").read_text())
    value = {k: metrics["metrics"][k] for k in ("auroc", "accuracy")}
    value = {k: v["value"] if isinstance(v, dict) else v for k, v in value.items()}
    epochs = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in line) \
        if (run / "metrics.jsonl").is_file() else None  # fmt: skip
    return {**value, "n": metrics["n"], "epochs": epochs, "run": str(run)}


def tune(config: Path, out: Path, dataset: str, parent: Path, trials: int, sets: list[str]) -> Path:
    """`biomx tune` over TUNE_SPACE (less the keys `sets` fixes) on the fine-tuned config (seed 0,
    scored on the validation split); returns its best_config.yaml."""
    import yaml  # a biomx dependency

    raw = yaml.safe_load(config.read_text())
    raw["model"].update({"init_from": str(parent), "reinit": ["head"]})
    fixed = {s.partition("=")[0] for s in sets}
    space = {k: v for k, v in TUNE_SPACE.items() if k not in fixed}
    raw["tune"] = {"trials": trials, "metric": "val_auroc", "seed": 0, "space": space}
    raw["name"] = dataset
    tuned = out / f"{dataset}-tune.yaml"
    tuned.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"tune {dataset} ({trials} trials)", flush=True)
    biomx("tune", str(tuned), "--set", f"output.dir={out}", *sum((["--set", s] for s in sets), []),
          log=out / f"{dataset}-tune.log")  # fmt: skip
    return out / f"{dataset}-tune" / "best_config.yaml"


def best_trial(best_config: Path) -> Path:
    """The run of the study's best trial (seed 0, the config's train.seed), from tune_summary.json."""
    return Path(json.loads((best_config.parent / "tune_summary.json").read_text())["best"]["run"])


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(rows)}
    for key in ("auroc", "accuracy"):
        values = [r[key] for r in rows]
        out[key] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(results: dict[str, Any]) -> str:
    lines = [f"Measured {results['date']} at commit {results['commit']} ({results['device']}).", "",
             "| dataset | run | seeds | test AUC (mean ± sd) | test ACC (mean ± sd) | target AUC / ACC |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for dataset, arms in results["datasets"].items():
        target = TARGETS[dataset]
        for arm, entry in arms.items():
            s = entry["summary"]
            lines.append(f"| {dataset} | {arm} | {s['seeds']} | {s['auroc']['mean']:.3f} ± {s['auroc']['sd']:.3f} | "
                         f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['sd']:.3f} | "
                         f"> {target['auroc']:.3f} / > {target['accuracy']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tune-trials", type=int, default=8, help="0: no tuned arm")
    ap.add_argument("--arms", nargs="+", default=["scratch", "finetuned", "tuned"],
                    choices=["scratch", "finetuned", "tuned"], help="which arms (e.g. one process per arm)")
    ap.add_argument("--ensemble", type=int, default=0, help="K > 1: one deep ensemble of K members (seed 0)")
    ap.add_argument("--set", action="append", default=[], help="an override for every run (e.g. train.epochs=2)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "medmnist_transfer")
    args = ap.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    parent = train(HERE / "pretrain_pneumonia.yaml", args.out, "parent", args.set)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"), "commit": commit(),
        "device": f"CPU, {os.cpu_count()} cores", "parent": test_numbers(parent), "datasets": {},
    }  # fmt: skip
    for dataset in args.datasets:
        config = HERE / f"{dataset}.yaml"
        fine = [f"model.init_from={parent}", "model.reinit=[head]"]
        arms: dict[str, tuple[Path, list[str]]] = {"scratch": (config, []), "finetuned": (config, fine)}
        runs: dict[str, Any] = results["datasets"].setdefault(dataset, {})
        for arm in [a for a in args.arms if a != "tuned" or args.tune_trials > 0]:
            if arm == "tuned":  # after the plain arms: their table is written first
                arms["tuned"] = (tune(config, args.out, dataset, parent, args.tune_trials, args.set), [])
            cfg, sets = arms[arm]
            rows = [test_numbers(best_trial(cfg) if arm == "tuned" and seed == 0 else
                                 train(cfg, args.out, f"{dataset}-{arm}-s{seed}", [*args.set, *sets, f"train.seed={seed}"]))
                    for seed in range(args.seeds)]  # fmt: skip
            runs[arm] = {"summary": summarise(rows), "runs": rows}
            write(args.out, results)
        if args.ensemble > 1:
            arm = "tuned" if "tuned" in arms else "finetuned"
            cfg, sets = arms[arm]
            row = test_numbers(train(cfg, args.out, f"{dataset}-{arm}-ens{args.ensemble}",
                                     [*args.set, *sets, f"model.ensemble={args.ensemble}", "train.seed=0"]))  # fmt: skip
            runs[f"{arm}, ensemble of {args.ensemble}"] = {"summary": summarise([row]), "runs": [row]}
        write(args.out, results)
    print(table(results))


def write(out: Path, results: dict[str, Any]) -> None:
    """The JSON and the table, atomically; the datasets and arms another invocation wrote (e.g. one
    process per dataset or arm on the same --out) are kept."""
    path = out / "medmnist_transfer.json"
    if path.is_file():
        old = json.loads(path.read_text())["datasets"]
        merged = {d: {**old.get(d, {}), **results["datasets"].get(d, {})} for d in [*old, *results["datasets"]]}
        results = {**results, "datasets": merged}
    for name, text in (("medmnist_transfer.json", json.dumps(results, indent=1)), ("medmnist_transfer.md", table(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


if __name__ == "__main__":
    main()
