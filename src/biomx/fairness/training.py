"""`train.fairness` in the Trainer: reweighing through the sampler, and the adversary's loss term.

Reweighting in the loss is done by sampling (docs/trust.md): each epoch draws the training split
with replacement, sample i with probability proportional to its reweighing weight w_i
(`group_weights`), so the expected batch loss is the w-weighted mean of the per-sample losses,
whatever the task's loss is (`task.loss` returns a mean; no task needs a per-sample variant). The
draw depends only on (seed, epoch), so a resumed run sees the same batches, and each torchrun rank
takes every world-th draw. The same sampler keeps the epoch's order, which tells the adversary the
group of every sample of a batch (`Trainer(extra=...)`: `prepare`, `loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from biomx.engine.callbacks import Callback
from biomx.engine.samplers import ResumableSampler
from biomx.errors import ConfigError
from biomx.fairness.adversary import Adversary, last_linear, probe
from biomx.fairness.groups import group_order, subgroup_labels
from biomx.fairness.mitigation import group_weights
from biomx.protocols import FittedModel
from biomx.runs import read_json, write_json

MAX_LABELS = 20  # integer targets with more distinct values (counts) are not labels to reweigh by
FILE = "fairness_training.json"


class OrderedSampler(ResumableSampler):
    """The Trainer's resumable sampler that keeps the epoch's order; with `weights`, a weighted
    draw with replacement (seeded by seed + epoch) instead of a permutation."""

    def __init__(self, data: Dataset, weights: torch.Tensor | None, *, num_replicas: int, rank: int, seed: int):
        super().__init__(data, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = weights
        self.order: list[int] = []

    def _epoch_order(self) -> list[int]:
        if self.weights is None:
            return list(DistributedSampler.__iter__(self))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g).tolist()
        return drawn[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        self.order = self._epoch_order()
        return iter(self.order[self.start :])


def check_training(cfg: Any) -> None:
    """Refuse, before any run file is written, what train.fairness cannot do (one line each)."""
    f = cfg.train.fairness
    if f is None:
        return
    for key, column in (("reweight", f.reweight), ("adversary.column", f.adversary and f.adversary.column)):
        if column is not None and column not in cfg.eval.subgroups:
            raise ConfigError(f"train.fairness.{key}: {column!r} is not in eval.subgroups "
                              f"({', '.join(cfg.eval.subgroups) or 'empty'}); add it there so the test split "
                              "is scored by it too")  # fmt: skip
    if cfg.model.name == "auto" and (f.reweight or f.adversary):  # selection fits its candidates on folds
        raise ConfigError("train.fairness: not supported with model.name: auto; name the model")
    if cfg.train.privacy is not None and (f.reweight or f.adversary):
        raise ConfigError("train.fairness: not supported with train.privacy (DP-SGD's Poisson sampling replaces "
                          "the weighted sampler, and its accounting covers the model's gradients only)")  # fmt: skip


class FairTraining(Callback):
    """What the Trainer calls (`Trainer(extra=...)`): `prepare` once its optimizer exists, `loss` on
    every training batch; as a callback it records the adversary's accuracy."""

    def __init__(self, weights: np.ndarray | None, groups: np.ndarray | None, adversary: Any, facts: dict[str, Any],
                 val_groups: np.ndarray | None = None):  # fmt: skip
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
        self.val_groups = val_groups  # index of each validation sample's group (-1: not seen in training)
        self.spec, self.facts = adversary, facts
        self.adversary: Adversary | None = None
        self.sampler_: OrderedSampler | None = None

    def prepare(self, trainer: Any) -> OrderedSampler:
        """Called by the Trainer once its optimizer exists: the adversary (if any), then the sampler."""
        self.attach(trainer)
        self.sampler_ = OrderedSampler(trainer.train_data, self.weights, num_replicas=trainer.world,
                                       rank=trainer.rank, seed=trainer.settings.seed)  # fmt: skip
        return self.sampler_

    def attach(self, trainer: Any) -> None:
        """The adversary on the model's representation; its parameters join the trainer's optimizer."""
        if self.spec is None:
            return
        if trainer.world > 1:
            raise ConfigError("train.fairness.adversary: not supported under torchrun (one process only)")
        layer = last_linear(trainer.model)
        if layer is None:
            raise ConfigError(f"train.fairness.adversary: model {trainer.model_config.get('model', {}).get('name')!r} "
                              "has no nn.Linear layer whose input could be the representation")  # fmt: skip
        n_groups = len(self.facts["adversary"]["groups"])
        self.adversary = Adversary(layer.in_features, n_groups, self.spec.hidden, self.spec.weight).to(trainer.device)
        self.adversary.attach(trainer.model)
        trainer.optimizer.add_param_group({"params": list(self.adversary.parameters())})

    def loss(self, trainer: Any, batch: int) -> torch.Tensor | float:
        """The adversary's cross-entropy on training batch `batch` of this epoch (0 without one)."""
        if self.adversary is None or self.sampler_ is None:
            return 0.0
        b = trainer.local_batch
        index = torch.as_tensor(self.sampler_.order[batch * b : (batch + 1) * b], dtype=torch.long)
        return self.adversary.loss(self.groups[index].to(trainer.device))

    def on_train_start(self, trainer: Any) -> None:
        """A resumed run keeps the adversary's accuracy of the epochs already done."""
        done = trainer.state["epoch"]
        path = Path(trainer.run_dir or ".") / FILE
        if self.adversary is not None and done and trainer.run_dir is not None and path.is_file():
            before = read_json(path).get("adversary", {}).get("accuracy_by_epoch", [])
            self.facts["adversary"]["accuracy_by_epoch"] = list(before[:done])

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.adversary is not None:
            self.facts["adversary"].setdefault("accuracy_by_epoch", []).append(round(self.adversary.accuracy(), 4))
        if trainer.run_dir is not None:
            write_json(Path(trainer.run_dir) / FILE, self.facts)

    def on_train_end(self, trainer: Any, error: BaseException | None) -> None:
        """The adversary's result checked by a fresh probe on the final representation."""
        if self.adversary is None or error is not None or self.val_groups is None or trainer.val_data is None:
            return
        found = probe(trainer, self.groups.numpy(), self.val_groups)
        if found is not None:
            self.facts["adversary"]["probe"] = found
        if trainer.run_dir is not None:
            write_json(Path(trainer.run_dir) / FILE, self.facts)


def fair_training(p: Any, model: Any, train_data: Dataset) -> FairTraining | None:
    """The Trainer's `extra` for `train.fairness` (None without it): weights and groups of the training split."""
    f = p.cfg.train.fairness
    if f is None or not (f.reweight or f.adversary):
        return None
    train_index = np.asarray(p.splits["train"])
    if isinstance(model, FittedModel) or len(train_data) != len(train_index):
        raise ConfigError("train.fairness: needs a model trained by gradient steps on the whole training split "
                          "(not a solver's model, nor model.name: auto)")  # fmt: skip
    labels = subgroup_labels(p.cfg, p.modality, p.data)
    facts: dict[str, Any] = {}
    weights = groups = val_groups = None
    if f.reweight:
        weights, cells = reweighing(labels[f.reweight], p.targets, train_index)
        facts["reweight"] = {"column": f.reweight, "weights": cells}
    if f.adversary:
        g = labels[f.adversary.column][train_index].astype(str)
        names = group_order(g)
        lookup = {name: k for k, name in enumerate(names)}
        groups = np.array([lookup[v] for v in g], dtype=np.int64)
        val_groups = np.array([lookup.get(v, -1) for v in labels[f.adversary.column][p.splits["val"]].astype(str)],
                              dtype=np.int64)  # fmt: skip
        shares = [float(np.mean(g == n)) for n in names]
        facts["adversary"] = {"column": f.adversary.column, "weight": f.adversary.weight, "groups": names,
                              "chance": round(max(shares), 4)}  # fmt: skip
    return FairTraining(weights, groups, f.adversary, facts, val_groups)


def reweighing(groups: np.ndarray, targets: Any, train_index: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Weights of the training split's samples (in split order) and the weight of each cell
    ("group, label y"): Kamiran & Calders by (group, label) when the targets are labels; else each
    group given the same total weight (cells are then the groups)."""
    y = np.asarray(targets.numpy() if isinstance(targets, torch.Tensor) else targets)
    g = np.asarray(groups)[train_index].astype(str)
    if y.ndim == 1 and np.all(np.mod(y, 1) == 0) and len(np.unique(y[train_index])) <= MAX_LABELS:  # class indices
        labels = y.astype(np.int64).astype(str)
        w = group_weights(groups, labels, train_index)[train_index].astype(np.float64)
        cell = np.char.add(np.char.add(g, ", label "), labels[train_index])
    else:  # regression, survival, multilabel: balance the groups only
        _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
        w = 1.0 / counts[inverse]
        w /= w.mean()
        cell = g
    return w, {str(c): round(float(w[cell == c][0]), 4) for c in sorted(set(cell.tolist()))}
