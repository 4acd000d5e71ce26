"""`biomx federate compare`: what federation buys on this data. The same rounds, in the same
simulation, for: the federation of every site; each site alone (a "federation" of that site
only: what it could train without the others); and pooled (one site holding every site's rows:
what the sites would get by sharing their data). All are scored on the experiment's one test
split, so the table reads down a column. Same training regime everywhere (rounds x local_epochs,
constant learning rate, a fresh optimizer each round), so only the data differs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from biomx.engine.logging import console
from biomx.errors import BiomxError
from biomx.experiment import Prepared, prepare
from biomx.federated.client import SiteClient
from biomx.federated.config import FederatedConfig
from biomx.federated.rounds import Rounds, write_run_files
from biomx.federated.simulation import run_rounds
from biomx.federated.sites import site_rows
from biomx.federated.weights import build_global_model, get_weights
from biomx.privacy.report import SITES
from biomx.runs import new_run_dir, read_json, write_csv, write_json


def _variant(p: Prepared, folder: Path, name: str) -> Prepared:
    output = p.cfg.output.model_copy(update={"dir": str(folder), "name": name})
    return dataclasses.replace(p, cfg=p.cfg.model_copy(update={"output": output}))


def _train(fed: FederatedConfig, p: Prepared, folder: Path, name: str, rows: list[dict[str, np.ndarray]]
           ) -> dict[str, Any]:  # fmt: skip
    q = _variant(p, folder, name)
    run_dir = folder / name
    write_run_files(run_dir, q, fed)
    clients = [SiteClient(q, fed, k, r) for k, r in enumerate(rows)]
    run_rounds(fed, Rounds(run_dir, q, fed), get_weights(build_global_model(q, fed.seed)), clients)
    evaluation = read_json(run_dir / "test_metrics.json")
    sites = read_json(run_dir / SITES)["sites"] if (run_dir / SITES).is_file() else {}
    # DP sites: the largest epsilon any site spent (its patients' guarantee is that site's own).
    spent = {f"max_site_epsilon_{a}": max(s[f"epsilon_{a}"] for s in sites.values()) for a in ("rdp", "prv")
             if sites}  # fmt: skip
    train = np.concatenate([r["train"] for r in rows])
    values, counts = np.unique(np.array([str(x) for x in p.data.labels], dtype=object)[train], return_counts=True)
    return {"model": name, "train_rows": len(train), "labels": " / ".join(f"{v} {c}" for v, c in zip(values, counts, strict=True)),
            **{m: evaluation["metrics"][m]["value"] for m in evaluation["headline"]}, **spent}  # fmt: skip


def compare(fed: FederatedConfig, cfg: Any) -> Path:
    """Train federated, each site alone and pooled; write comparison.csv/json; returns the folder."""
    if not isinstance(fed.sites, int):
        raise BiomxError("compare: needs sites: N (sites cut from one experiment, sharing its test split)")
    p = prepare(cfg)
    if not len(p.splits["test"]):
        raise BiomxError(f"{cfg.data.path}: compare needs a test split (data.split.test > 0)")
    folder = new_run_dir(cfg.output.dir, f"{cfg.name}-compare")
    sites = [site_rows(fed, p.splits, p.data.labels, k) for k in range(fed.n_sites)]
    pooled = {"train": p.splits["train"], "val": p.splits["val"]}
    rows = [_train(fed, p, folder, "federated", sites)]
    rows += [_train(fed, p, folder, f"site{k + 1}", [r]) for k, r in enumerate(sites)]
    rows.append(_train(fed, p, folder, "pooled", [pooled]))
    columns = {key: [r.get(key) for r in rows] for key in rows[0]}
    write_csv(folder / "comparison.csv", columns)
    write_json(folder / "comparison.json", rows)
    for r in rows:
        console.print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) and math.isfinite(v) else f"{k} {v}"
                                for k, v in r.items()))  # fmt: skip
    return folder
