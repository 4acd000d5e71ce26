"""How hard is a held-out 15% of BreastMNIST's official training split, compared with the official
validation split? A fixed random forest on raw pixels, scored on both, over many holdout draws.

    python benchmarks/medmnist_split_difficulty.py            # 20 draws, writes results/medmnist_split_difficulty.json

Why: issue 19 compares biomx with MedMNIST's published test numbers, but the official test split is
not in ../shared, so benchmarks/medmnist_transfer.py tests on a stratified 15% of the official
training split (seed 0). This script tells how that one draw compares with other draws and with
the official validation split, for a model that has no epochs or seeds to pick (so a difference is
the split's, not the training's). Stratified draws as sklearn's StratifiedShuffleSplit makes them;
biomx's own seed-0 draw (the one every run uses) is read from a run's split.csv with --split-csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit

ROOT = Path(__file__).resolve().parent


def scores(x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, train: np.ndarray,
           test: np.ndarray) -> tuple[float, float]:  # fmt: skip
    """(holdout AUC, official-val AUC) of a forest trained on `train` rows."""
    forest = RandomForestClassifier(n_estimators=300, random_state=0, n_jobs=1).fit(x[train], y[train])
    return (float(roc_auc_score(y[test], forest.predict_proba(x[test])[:, 1])),
            float(roc_auc_score(yv, forest.predict_proba(xv)[:, 1])))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--npz", type=Path, default=Path("/work/shared/data/medmnist/breastmnist.npz"))
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--split-csv", type=Path, help="a BreastMNIST run's split.csv: also score biomx's own draw")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "medmnist_split_difficulty.json")
    args = ap.parse_args()
    with np.load(args.npz) as d:
        x, y = d["train_images"].reshape(len(d["train_images"]), -1) / 255.0, d["train_labels"][:, 0]
        xv, yv = d["val_images"].reshape(len(d["val_images"]), -1) / 255.0, d["val_labels"][:, 0]
    draws = []
    for seed in range(args.draws):
        train, test = next(StratifiedShuffleSplit(1, test_size=0.15, random_state=seed).split(x, y))
        draws.append(scores(x, y, xv, yv, train, test))
    result = {
        "model": "RandomForest(300 trees) on raw 28x28 pixels", "draws": args.draws,
        "holdout_auc": [round(a, 4) for a, _ in draws], "val_auc": [round(b, 4) for _, b in draws],
        "holdout_mean": statistics.fmean(a for a, _ in draws), "holdout_sd": statistics.stdev(a for a, _ in draws),
        "val_mean": statistics.fmean(b for _, b in draws),
    }  # fmt: skip
    if args.split_csv:
        # biomx's ids are "train:<row>" / "val:<row>"; only the official train rows can be test rows.
        rows = {r["id"]: r["split"] for r in csv.DictReader(args.split_csv.open())}
        split = np.array([rows[f"train:{i}"] for i in range(len(x))])
        own = scores(x, y, xv, yv, np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))
        result["biomx_seed0"] = {"holdout_auc": own[0], "val_auc": own[1],
                                 "rank_among_draws": sum(a < own[0] for a, _ in draws) + 1}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(json.dumps({k: v for k, v in result.items() if k not in ("holdout_auc", "val_auc")}, indent=1))


if __name__ == "__main__":
    main()
