"""The federation's run folder: a normal biomx run (config.yaml, run.json, split.csv, data.json,
metrics.jsonl with one row per round, checkpoints/best.safetensors = the final global model,
then test_metrics.json and report.html from `biomx evaluate`), plus `federation/`: the
federation file's settings and one safetensors checkpoint per round, from which a stopped
federation resumes; and, when the sites train with DP, privacy_sites.json: each site's ledger
(its accountant history, noise, sample rate, epsilon per round), which a resumed federation
reads back and sends to the sites, so that no site's budget restarts."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from biomx import experiment
from biomx.engine.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from biomx.errors import BiomxError
from biomx.experiment import Prepared
from biomx.federated.client import DP_SITES
from biomx.federated.config import FederatedConfig
from biomx.federated.weights import build_global_model, to_state
from biomx.privacy.report import SITES
from biomx.runs import new_run_dir, read_json, write_json

ROUND_FILE = re.compile(r"round_(\d+)\.safetensors")


def run_folder(p: Prepared) -> Path:
    out = p.cfg.output
    return Path(out.dir) / out.name if out.name else new_run_dir(out.dir, p.cfg.name)


def write_run_files(run_dir: Path, p: Prepared, fed: FederatedConfig) -> None:
    """What `biomx train` writes before training (the same files, so evaluate/predict/export read
    the run as any other), and the federation's settings."""
    experiment.write_run_files(run_dir, p)
    write_json(run_dir / "federation" / "federation.json", fed.model_dump(mode="json"))


def _finite(value: Any) -> Any:
    """JSON has no NaN: a metric a round could not compute is null."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


class Rounds:
    """Records each round of a federation in its run folder and resumes from the last one."""

    def __init__(self, run_dir: Path, p: Prepared, fed: FederatedConfig):
        self.run_dir, self.p, self.fed = run_dir, p, fed
        self.keys = list(build_global_model(p, 0).state_dict())
        self.history: list[dict[str, Any]] = []
        self.done = 0  # rounds completed (before this process, on resume)
        self.sites: dict[str, dict[str, Any]] = {}  # site ("1".."N") -> its privacy ledger (DP sites)

    @property
    def folder(self) -> Path:
        return self.run_dir / "federation"

    def last_round(self) -> Path | None:
        found = sorted((int(m.group(1)), f) for f in self.folder.glob("round_*.safetensors")
                       if (m := ROUND_FILE.fullmatch(f.name)))  # fmt: skip
        return found[-1][1] if found else None

    def resume(self) -> list[np.ndarray] | None:
        """The last round's global weights (None: nothing to resume); sets `done` and `history`."""
        path = self.last_round()
        if path is None:
            return None
        weights, extra = load_checkpoint(path)
        self.done, self.history = int(extra["round"]), list(extra.get("history") or [])
        # Everything the sites reported spending, also in a round not checkpointed: never less.
        if (self.run_dir / SITES).is_file():
            self.sites = dict(read_json(self.run_dir / SITES).get("sites") or {})
        return [weights[k].numpy() for k in self.keys]

    def record_sites(self, rnd: int, reports: list[dict[str, Any]]) -> None:
        """The ledgers DP sites sent with their round-`rnd` updates (fit metrics `dp_*`, see
        `biomx.federated.client`): RUN/privacy_sites.json, one entry per site."""
        reports = [m for m in reports if "dp_site" in m]
        for m in reports:
            site = self.sites.setdefault(str(int(m["dp_site"])), {"rounds": []})
            site.update({k: m[f"dp_{k}"] for k in ("noise_multiplier", "sample_rate", "training_samples",
                                                   "planned_steps", "steps", "target_epsilon", "delta", "accountant",
                                                   "epsilon_rdp", "epsilon_prv")})  # fmt: skip
            site["history"] = json.loads(str(m["dp_history"]))
            row = {"round": rnd, "steps": m["dp_steps"], "epsilon_rdp": m["dp_epsilon_rdp"],
                   "epsilon_prv": m["dp_epsilon_prv"]}  # fmt: skip
            site["rounds"] = [r for r in site["rounds"] if r["round"] != rnd] + [row]
        if reports:
            write_json(self.run_dir / SITES, {"sites": dict(sorted(self.sites.items(), key=lambda kv: int(kv[0])))})

    def site_budgets(self) -> dict[str, str]:
        """The fit config entry that gives every DP site its recorded history back (none without DP)."""
        if not self.sites:
            return {}
        return {DP_SITES: json.dumps({name: site["history"] for name, site in self.sites.items()})}

    def record_fit(self, rnd: int, weights: list[np.ndarray], clients: int, failures: int,
                   metrics: dict[str, Any]) -> None:  # fmt: skip
        """Round `rnd` (1-based, counted over resumes) aggregated: its checkpoint and metrics row."""
        row = {"epoch": rnd, "step": rnd, "train_loss": metrics.get("train_loss"), "clients": clients,
               "failures": failures}  # fmt: skip
        self.history = [r for r in self.history if r["epoch"] < rnd] + [row]
        state = to_state(self.keys, weights)
        extra = {"round": rnd, "history": self.history, "model_config": self.p.info}
        save_checkpoint(self.folder / f"round_{rnd:03d}.safetensors", state, extra)
        self._write_metrics()

    def record_evaluate(self, rnd: int, loss: float | None, metrics: dict[str, Any]) -> None:
        for row in self.history:
            if row["epoch"] == rnd:
                row["val_loss"] = loss
                row.update({f"val_{k}": v for k, v in metrics.items()})
        self._write_metrics()

    def _write_metrics(self) -> None:
        lines = [json.dumps({k: _finite(v) for k, v in row.items()}) for row in self.history]
        atomic_write_text(self.run_dir / "metrics.jsonl", "\n".join(lines) + "\n")

    def finish(self, weights: list[np.ndarray] | None = None) -> Path:
        """The final global model as the run's best.safetensors (the last round's by default)."""
        if weights is None:
            weights = self.resume()
            if weights is None:
                raise BiomxError(f"{self.run_dir}: no round finished; nothing to write")
        state = to_state(self.keys, weights)
        path = self.run_dir / "checkpoints" / "best.safetensors"
        rounds = max((r["epoch"] for r in self.history), default=self.done)
        save_checkpoint(path, state, {"model_config": self.p.info, "epoch": rounds, "monitor": "federated round",
                                      "best": None})  # fmt: skip
        return path

