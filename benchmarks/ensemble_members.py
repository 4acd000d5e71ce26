"""What a deep ensemble and test-time flips each add: test AUROC of every member alone and of the
whole ensemble, with and without the run's `data.image.tta`, for an image run trained on an npz.

    python benchmarks/ensemble_members.py RUN [RUN ...]      # prints a table, writes RUN/members.json
    python benchmarks/ensemble_members.py --first 3 RUN      # and the ensemble of its first 3 members

The test rows are the run's own (`split.csv`, ids "<npz split>:<row>"), read from the npz named in
its config, and predicted through `biomx.predictor` exactly as `biomx predict` would (the same
preprocessing, the members' best checkpoints). Why: issue 19's BreastMNIST runs combine a
5-member ensemble with horizontal-flip averaging; this tells which part helped, on the same images.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from sklearn.metrics import roc_auc_score

from biomx.predictor import Predictor, load


def test_images(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images (N, H, W[, C]) and 0/1 labels, from the npz its config names."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    rows = [r for r in csv.DictReader((run / "split.csv").open()) if r["split"] == "test"]
    with np.load(config["data"]["path"]) as arrays:
        images = np.stack([arrays[f"{r['id'].split(':')[0]}_images"][int(r["id"].split(":")[1])] for r in rows])
    return images, np.array([int(r["label"]) for r in rows])


def auroc(p: Predictor, images: np.ndarray, labels: np.ndarray) -> float:
    return float(roc_auc_score(labels, p.predict_proba(list(images))[:, 1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--first", type=int, default=None,
                    help="also score the ensemble of the first K members (to compare with a smaller ensemble)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for run in args.runs:
        whole = load(run)
        images, labels = test_images(run)
        plain_info = copy.deepcopy(whole.info)
        plain_info["preprocessing"]["tta"] = []
        flips = whole.info["preprocessing"].get("tta") or []
        result: dict = {"run": str(run), "n": len(labels), "tta": flips, "members": []}
        for info, key in ((plain_info, "no_tta"), (whole.info, "tta")):
            if key == "tta" and not flips:
                continue
            for k, model in enumerate(whole._models):  # noqa: SLF001 - one member at a time
                one = Predictor(run, [model], info, whole.modality, whole.task, torch.device("cpu"))
                if key == "no_tta":
                    result["members"].append({})
                result["members"][k][key] = auroc(one, images, labels)
            result[f"ensemble_{key}"] = auroc(Predictor(run, whole._models, info, whole.modality, whole.task,  # noqa: SLF001
                                                        torch.device("cpu")), images, labels)  # fmt: skip
            if args.first:
                first = Predictor(run, whole._models[: args.first], info, whole.modality, whole.task, torch.device("cpu"))  # noqa: SLF001
                result[f"ensemble_first{args.first}_{key}"] = auroc(first, images, labels)
        (run / "members.json").write_text(json.dumps(result, indent=1))
        singles = [m["no_tta"] for m in result["members"]]
        print(f"{run.name}: members {np.mean(singles):.3f} ± {np.std(singles, ddof=1) if len(singles) > 1 else 0:.3f} "
              f"({', '.join(f'{s:.3f}' for s in singles)}); ensemble {result['ensemble_no_tta']:.3f}"
              + (f"; with tta: members {np.mean([m['tta'] for m in result['members']]):.3f}, "
                 f"ensemble {result['ensemble_tta']:.3f}" if flips else ""))  # fmt: skip


if __name__ == "__main__":
    main()
