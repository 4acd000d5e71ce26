"""The privacy ledger: `privacy.json` in the run, the epsilon a DP run has spent.

After every epoch it records the accountant's history, (noise multiplier, sample rate, steps),
and epsilon at `delta` under the RDP and PRV accountants side by side (PRV is tighter; RDP is
what most papers quote). The steps come from the trainer's own state, which the checkpoint holds,
and the noise multiplier and sample rate from the ledger itself: a resumed run continues the
accountant where the checkpoint left it, it never restarts it.

A run with a run folder also records its history in the budget book (`biomx.privacy.budget`),
under the digest of its training samples, and its ledger gains the totals over every DP run on
the same data. A ledger without a run folder (a federated site's rounds) can start from a `prior`
history: what the site spent in earlier rounds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomx.engine.callbacks import Callback
from biomx.errors import BiomxError
from biomx.privacy import budget
from biomx.privacy.budget import LEDGER, History, epsilons
from biomx.runs import read_json, write_json

if TYPE_CHECKING:
    from biomx.engine.trainer import Trainer
    from biomx.privacy.dp import PrivateTraining

__all__ = ["LEDGER", "History", "PrivacyLedger", "epsilons", "read_ledger", "within_budget"]


def read_ledger(run_dir: Path | None) -> dict[str, Any] | None:
    """A run's ledger, or None when it has none."""
    if run_dir is None or not (Path(run_dir) / LEDGER).is_file():
        return None
    ledger = read_json(Path(run_dir) / LEDGER)
    if not isinstance(ledger, dict) or "noise_multiplier" not in ledger:
        raise BiomxError(f"{Path(run_dir) / LEDGER}: not a privacy ledger; move it away and train again")
    return ledger


class PrivacyLedger(Callback):
    """Writes `privacy.json` after every epoch (rank 0), and the run's entry in the budget book;
    `rows` and `history` also without a run directory."""

    def __init__(self, private: PrivateTraining, prior: History | None = None):
        self.private = private
        self.prior = budget.compact(list(prior or []))  # spent before this trainer (a site's earlier rounds)
        self.rows: list[dict[str, Any]] = []
        self.run_id = budget.new_run_id()
        self.key: str | None = None  # the training data's digest (a run folder with split.csv)
        self.book = budget.book_path(private.config.budget_file)
        self.totals: dict[str, Any] | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        # A resumed run keeps the rows of the epochs its checkpoint has done, and its run id (its
        # entry in the book is replaced, never doubled).
        previous = read_ledger(trainer.run_dir)
        done = trainer.state["epoch"]
        self.rows = [row for row in (previous or {}).get("epochs", []) if row["epoch"] <= done]
        self.run_id = str((previous or {}).get("run_id") or self.run_id)
        self.key = budget.data_key(trainer.run_dir) if trainer.run_dir is not None else None
        if self.key is not None:
            budget.check(self.book)  # an unwritable or foreign book fails now, in one line

    def history(self, steps: int) -> History:
        p = self.private
        return budget.compact([*self.prior, (p.noise_multiplier, p.sample_rate, steps)])

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        p = self.private
        steps = int(trainer.state["step"])
        history = self.history(steps)
        spent = epsilons(history, p.config.delta)
        self.rows.append({"epoch": record["epoch"], "steps": steps, "epsilon_rdp": spent["rdp"],
                          "epsilon_prv": spent["prv"]})  # fmt: skip
        if trainer.run_dir is None:
            return
        if self.key is not None:
            self.totals = budget.record(self.book, self.key, self.run_id, history, p.config.delta)
        write_json(trainer.run_dir / LEDGER, self.ledger(steps))

    def ledger(self, steps: int) -> dict[str, Any]:
        p = self.private
        last = self.rows[-1] if self.rows else {"epsilon_rdp": 0.0, "epsilon_prv": 0.0}
        totals = self.totals or {"epsilon_total_rdp": last["epsilon_rdp"], "epsilon_total_prv": last["epsilon_prv"],
                                 "runs_on_same_data": 1}  # fmt: skip
        return {
            "target_epsilon": p.config.epsilon, "delta": p.config.delta, "accountant": p.config.accountant,
            "max_grad_norm": p.config.max_grad_norm, "noise_multiplier": p.noise_multiplier,
            "sample_rate": p.sample_rate, "expected_batch_size": round(p.sample_rate * p.n_samples),
            "training_samples": p.n_samples, "steps_per_epoch": p.steps_per_epoch, "planned_steps": p.planned_steps,
            "steps": steps, "history": [list(h) for h in self.history(steps)],
            "epsilon": last[f"epsilon_{p.config.accountant}"], "epsilon_rdp": last["epsilon_rdp"],
            "epsilon_prv": last["epsilon_prv"], "epochs": self.rows,
            "run_id": self.run_id, "data_key": self.key, **totals,
        }  # fmt: skip


def within_budget(ledger: dict[str, Any], tolerance: float = 0.05) -> bool:
    """Whether the calibrating accountant's epsilon is at most the target (relative tolerance)."""
    return ledger["epsilon"] <= ledger["target_epsilon"] * (1 + tolerance) and not math.isnan(ledger["epsilon"])
