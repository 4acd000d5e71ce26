"""One site of a federation: a Flower `NumPyClient` that trains the experiment's model on the
site's rows through the normal biomx Trainer (weights as `biomx.federated.weights` carries them)."""

from __future__ import annotations

from typing import Any

import flwr as fl
import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from biomx.data.batching import collate_batch
from biomx.engine.trainer import LossFn, Trainer
from biomx.errors import BiomxError
from biomx.experiment import Prepared
from biomx.federated.config import FederatedConfig
from biomx.federated.weights import build_global_model, get_weights, set_weights


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

    def _trainer(self, loss_fn: LossFn, seed: int, epochs: int) -> Trainer:
        # A constant learning rate (train.optimizer.lr): a schedule of one round's few epochs would
        # decay to nothing in every round; early stopping and mid-epoch saves belong to the server.
        train = self.p.cfg.train
        schedule = train.schedule.model_copy(update={"name": "constant", "warmup_epochs": 0.0})
        settings = train.model_copy(update={"epochs": epochs, "seed": seed, "progress": False, "schedule": schedule,
                                            "early_stopping": None, "checkpoint_every": None})  # fmt: skip
        return Trainer(self.model, loss_fn, self.train_data, settings=settings, run_dir=None,
                       collate_fn=collate_batch, tensorboard=False, task=self.p.task)  # fmt: skip

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
        history = self._trainer(loss_fn, seed, self.fed.local_epochs).fit()
        return get_weights(self.model), len(self.train_data), {"train_loss": float(history[-1]["train_loss"])}

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
