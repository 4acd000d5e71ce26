"""The privacy ledger: `privacy.json` in the run, the epsilon a DP run has spent.

After every epoch it records the accountant's history, (noise multiplier, sample rate, steps),
and epsilon at `delta` under the RDP and PRV accountants side by side (PRV is tighter; RDP is
what most papers quote). The steps come from the trainer's own state, which the checkpoint holds,
and the noise multiplier and sample rate from the ledger itself: a resumed run continues the
accountant where the checkpoint left it, it never restarts it.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomx.engine.callbacks import Callback
from biomx.errors import BiomxError
from biomx.plugins import import_extra
from biomx.runs import read_json, write_json

if TYPE_CHECKING:
    from biomx.engine.trainer import Trainer
    from biomx.privacy.dp import PrivateTraining

LEDGER = "privacy.json"
History = list[tuple[float, float, int]]  # (noise multiplier, sample rate, steps), as opacus keeps it


def epsilons(history: History, delta: float) -> dict[str, float]:
    """Epsilon spent at `delta` after `history`, under each accountant."""
    accountants = import_extra("opacus.accountants", "train.privacy")
    spent: dict[str, float] = {}
    for name, cls in (("rdp", accountants.RDPAccountant), ("prv", accountants.PRVAccountant)):
        accountant = cls()
        accountant.history = list(history)
        with warnings.catch_warnings():  # opacus warns about its own numerical choices
            warnings.simplefilter("ignore")
            spent[name] = float(accountant.get_epsilon(delta)) if history else 0.0
    return spent


def read_ledger(run_dir: Path | None) -> dict[str, Any] | None:
    """A run's ledger, or None when it has none."""
    if run_dir is None or not (Path(run_dir) / LEDGER).is_file():
        return None
    ledger = read_json(Path(run_dir) / LEDGER)
    if not isinstance(ledger, dict) or "noise_multiplier" not in ledger:
        raise BiomxError(f"{Path(run_dir) / LEDGER}: not a privacy ledger; move it away and train again")
    return ledger


class PrivacyLedger(Callback):
    """Writes `privacy.json` after every epoch (rank 0); `rows` also without a run directory."""

    def __init__(self, private: PrivateTraining):
        self.private = private
        self.rows: list[dict[str, Any]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        # A resumed run keeps the rows of the epochs its checkpoint has done.
        previous = read_ledger(trainer.run_dir)
        done = trainer.state["epoch"]
        self.rows = [row for row in (previous or {}).get("epochs", []) if row["epoch"] <= done]

    def history(self, steps: int) -> History:
        return [(self.private.noise_multiplier, self.private.sample_rate, steps)] if steps else []

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        p = self.private
        steps = int(trainer.state["step"])
        spent = epsilons(self.history(steps), p.config.delta)
        self.rows.append({"epoch": record["epoch"], "steps": steps, "epsilon_rdp": spent["rdp"],
                          "epsilon_prv": spent["prv"]})  # fmt: skip
        if trainer.run_dir is not None:
            write_json(trainer.run_dir / LEDGER, self.ledger(steps))

    def ledger(self, steps: int) -> dict[str, Any]:
        p = self.private
        last = self.rows[-1] if self.rows else {"epsilon_rdp": 0.0, "epsilon_prv": 0.0}
        return {
            "target_epsilon": p.config.epsilon, "delta": p.config.delta, "accountant": p.config.accountant,
            "max_grad_norm": p.config.max_grad_norm, "noise_multiplier": p.noise_multiplier,
            "sample_rate": p.sample_rate, "expected_batch_size": round(p.sample_rate * p.n_samples),
            "training_samples": p.n_samples, "steps_per_epoch": p.steps_per_epoch, "planned_steps": p.planned_steps,
            "steps": steps, "history": [list(h) for h in self.history(steps)],
            "epsilon": last[f"epsilon_{p.config.accountant}"], "epsilon_rdp": last["epsilon_rdp"],
            "epsilon_prv": last["epsilon_prv"], "epochs": self.rows,
        }  # fmt: skip


def within_budget(ledger: dict[str, Any], tolerance: float = 0.05) -> bool:
    """Whether the calibrating accountant's epsilon is at most the target (relative tolerance)."""
    return ledger["epsilon"] <= ledger["target_epsilon"] * (1 + tolerance) and not math.isnan(ledger["epsilon"])
