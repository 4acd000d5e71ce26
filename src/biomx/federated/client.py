"""One site of a federation: a Flower `NumPyClient` that trains the experiment's model on the
site's rows through the normal biomx Trainer (weights as `biomx.federated.weights` carries them).

A site whose experiment has `train.privacy` trains with DP-SGD: its noise is calibrated once for
all its steps (rounds x local_epochs x steps per epoch), so the whole federation spends at most
the target epsilon on the site's rows; its accountant history grows over the rounds and goes to
the server with each update (fit metrics `dp_*`, which the server writes to privacy_sites.json
and sends back each round, so a restarted site goes on from it)."""

from __future__ import annotations

import json
from typing import Any

import flwr as fl
import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from biomx.data.batching import collate_batch
from biomx.engine.trainer import LossFn, Trainer
from biomx.errors import BiomxError, ConfigError
from biomx.experiment import Prepared
from biomx.federated.config import FederatedConfig
from biomx.federated.weights import build_global_model, get_weights, set_weights
from biomx.privacy.budget import History, compact
from biomx.privacy.dp import make_private, noise_for
from biomx.privacy.ledger import PrivacyLedger

DP_PREFIX = "dp_"  # fit metrics that are one site's privacy ledger (never averaged across sites)
DP_SITES = "dp_sites"  # fit config: the server's record of every site's history (JSON)


def proximal_loss(loss_fn: LossFn, model: nn.Module, mu: float) -> LossFn:
    """FedProx: the task's loss plus mu/2 ||w - w_global||^2, w_global the weights the round began
    with (Li et al. 2020); it keeps a site with skewed data near the global model."""
    anchor = [p.detach().clone() for p in model.parameters()]

    def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        drift = sum(((p - a.to(p.device)) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        return loss_fn(outputs, targets) + 0.5 * mu * drift

    return loss


class SiteClient(fl.client.NumPyClient):
    """Site `site` (0-based) of the federation: `rows` are its "train" and "val" indices into the
    experiment's datasets."""

    def __init__(self, p: Prepared, fed: FederatedConfig, site: int, rows: dict[str, np.ndarray]):
        if not len(rows["train"]):
            raise BiomxError(f"site {site + 1}: holds no training rows; use fewer sites or a smaller partition.skew")
        self.p, self.fed, self.site = p, fed, site
        self.train_data = Subset(p.datasets["train"], _positions(p, "train", rows["train"]).tolist())
        val = _positions(p, "val", rows["val"])
        self.val_data = Subset(p.datasets["val"], val.tolist()) if len(val) else None
        self.model = build_global_model(p, fed.seed)
        self.privacy = p.cfg.train.privacy
        if self.privacy is not None and fed.strategy == "fedprox" and fed.proximal_mu > 0:
            # DP-SGD's optimizer keeps only the clipped per-sample gradients: the proximal term
            # (no per-sample gradient) would be dropped without a word.
            raise ConfigError("strategy: fedprox is not supported with train.privacy yet (DP-SGD would drop its "
                              "proximal term); use fedavg")  # fmt: skip
        self.dp_history: History = []  # what this site's DP-SGD has spent, all rounds so far

    def _trainer(self, loss_fn: LossFn, seed: int, epochs: int, private: bool = False) -> Trainer:
        # A constant learning rate (train.optimizer.lr): a schedule of one round's few epochs would
        # decay to nothing in every round; early stopping and mid-epoch saves belong to the server.
        # DP is added here, not by the Trainer: its noise covers every round, not this one.
        train = self.p.cfg.train
        schedule = train.schedule.model_copy(update={"name": "constant", "warmup_epochs": 0.0})
        settings = train.model_copy(update={"epochs": epochs, "seed": seed, "progress": False, "schedule": schedule,
                                            "early_stopping": None, "checkpoint_every": None,
                                            "privacy": None})  # fmt: skip
        trainer = Trainer(self.model, loss_fn, self.train_data, settings=settings, run_dir=None,
                          collate_fn=collate_batch, tensorboard=False, task=self.p.task)  # fmt: skip
        if private:
            trainer.privacy = make_private(trainer, config=self.privacy, prior=self.dp_history,
                                           planned_steps=self.planned_steps(trainer.batches_per_epoch))  # fmt: skip
        return trainer

    def planned_steps(self, steps_per_epoch: int) -> int:
        """Every step this site takes in the federation: what its noise is calibrated for."""
        return self.fed.rounds * self.fed.local_epochs * steps_per_epoch

    def _restore_history(self, config: dict[str, Any], rnd: int) -> None:
        """A site process that (re)starts mid-federation goes on from what it spent: the server's
        record (sent each round), or, without one, every earlier round counted as trained."""
        recorded = json.loads(str(config[DP_SITES])).get(str(self.site + 1)) if DP_SITES in config else None
        if recorded is not None:
            mine = compact([(float(a), float(b), int(c)) for a, b, c in recorded])
            if sum(h[2] for h in mine) > sum(h[2] for h in self.dp_history):  # a longer record wins
                self.dp_history = mine
        elif not self.dp_history and rnd > 1 and self.privacy is not None:
            n, batch = len(self.train_data), self.p.cfg.train.batch_size
            per_round = self.fed.local_epochs * (n // batch)
            sigma = noise_for(self.privacy, batch / n, self.planned_steps(n // batch))
            self.dp_history = [(sigma, batch / n, (rnd - 1) * per_round)]

    def _spent(self, trainer: Trainer) -> dict[str, Any]:
        """This site's ledger after the round, as fit metrics (scalars and JSON text, as Flower carries)."""
        ledger = next(c for c in trainer.callbacks if isinstance(c, PrivacyLedger))
        self.dp_history = ledger.history(int(trainer.state["step"]))
        p = ledger.private
        last = ledger.rows[-1]
        values = {"site": self.site + 1, "history": json.dumps(self.dp_history), "noise_multiplier": p.noise_multiplier,
                  "sample_rate": p.sample_rate, "training_samples": p.n_samples, "planned_steps": p.planned_steps,
                  "steps": sum(h[2] for h in self.dp_history), "target_epsilon": p.config.epsilon,
                  "delta": p.config.delta, "accountant": p.config.accountant, "epsilon_rdp": last["epsilon_rdp"],
                  "epsilon_prv": last["epsilon_prv"]}  # fmt: skip
        return {DP_PREFIX + k: v for k, v in values.items()}

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return get_weights(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        """`local_epochs` epochs on this site's rows from the global weights; a fresh optimizer each
        round, and a seed of its own per site and round (batch order, dropout)."""
        set_weights(self.model, parameters)
        rnd = int(config.get("server_round", 1))
        mu = float(config.get("proximal_mu", 0.0))
        loss_fn = proximal_loss(self.p.task.loss, self.model, mu) if mu > 0 else self.p.task.loss
        seed = self.fed.seed + 1000 * rnd + self.site
        private = self.privacy is not None
        if private:
            self._restore_history(config, rnd)
        trainer = self._trainer(loss_fn, seed, self.fed.local_epochs, private)
        try:
            history = trainer.fit()
        finally:
            if private:  # the model trains again next round: its per-sample hooks go now
                trainer.grad_sample_module.to_standard_module()
        metrics: dict[str, Any] = {"train_loss": float(history[-1]["train_loss"])}
        if private:
            metrics.update(self._spent(trainer))
        return get_weights(self.model), len(self.train_data), metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        """The global weights on this site's validation rows: the task's loss and quick metrics."""
        if self.val_data is None:
            return float("nan"), 0, {}
        set_weights(self.model, parameters)
        outputs, targets = self._trainer(self.p.task.loss, self.fed.seed, 1).predict(self.val_data)
        task = self.p.task
        metrics = task.quick_metrics(task.predictions(outputs).numpy(), targets.numpy())
        shown = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}
        return float(task.loss(outputs, targets)), len(self.val_data), shown


def _positions(p: Prepared, split: str, rows: np.ndarray) -> np.ndarray:
    """Where the experiment's rows `rows` sit in its split's dataset (which holds that split only)."""
    order = {int(r): i for i, r in enumerate(p.splits[split])}
    return np.array([order[int(r)] for r in rows], dtype=np.int64)
