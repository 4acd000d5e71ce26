"""`model.name: auto`: several model families tried on the training split, then stacked or picked.

Each candidate (default: every solver-fitted model serving the data and task, e.g. an SVM, a
random forest and a booster for molecules; `model.candidates` may add networks such as dmpnn)
is trained exactly as it would be alone (a solver fits; a network runs its epochs, validated on
the run's validation split) on K-1 folds of the training split and predicts the held-out fold.
Its out-of-fold outputs give its inner cross-validation score (the run's monitor metric, mean
and sd over folds). Then:

- `model.select: stack` (default): non-negative weights and a bias over the families' raw
  outputs, fitted on the out-of-fold outputs with the task's own loss (for regression with MSE,
  non-negative least squares); families with a negligible weight are dropped and the rest
  refitted.
- `model.select: best`: the family with the best inner-CV score, weight 1.

The families kept are refitted on the whole training split (networks keep their own run folder
under `candidates/`), assembled into one `models.stack.Stack`, and saved, evaluated and
predicted like any model. `selection.json` in the run folder holds every family's fold scores,
weights and fit times; the report shows them.

The out-of-fold scores of the stack itself use weights fitted on those same outputs, so they
are slightly optimistic; the test split, never seen here, is the honest number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from biomx.config import ExperimentConfig
from biomx.engine.logging import console
from biomx.engine.trainer import Trainer, lower_is_better
from biomx.errors import ConfigError
from biomx.models.registry import (
    STACK,
    build_model,
    check_model_args,
    check_model_fits,
    get_entry,
    models_for,
)
from biomx.protocols import FittedModel, Task
from biomx.runs import read_json, write_json

AUTO = "auto"  # model.name that selects among candidates
SELECTION_FILE = "selection.json"
NEGLIGIBLE_WEIGHT = 0.01  # a family below this share of the total weight is dropped

# Builds a Trainer for `model` on `train_data`, writing into `run_dir` (None: no files).
TrainerFactory = Callable[[nn.Module, Dataset, Path | None], Trainer]


def _fitted_by_solver(name: str) -> bool:
    entry = get_entry(name)
    return isinstance(entry.builder(**entry.listing_inputs(1), out_dim=1), FittedModel)


def candidates(cfg: ExperimentConfig) -> list[str]:
    """The families an auto run tries: `model.candidates`, or every solver-fitted model for the data and task."""
    if cfg.model.candidates:
        return list(cfg.model.candidates)
    return [name for name in models_for(cfg.data.modality, cfg.task.kind) if _fitted_by_solver(name)]


def check_config(cfg: ExperimentConfig) -> None:
    """model.name: auto: known candidates that fit the data and task, no shared model.args."""
    m = cfg.model
    if m.name != AUTO:
        if m.candidates:
            raise ConfigError("model.candidates: only read with model.name: auto; remove it or set name: auto")
        return
    names = candidates(cfg)
    for key, args in m.args.items():  # with auto, model.args holds arguments per family
        if key not in names or not isinstance(args, dict):
            raise ConfigError(f"model.args.{key}: with model.name: auto, model.args maps a candidate "
                              f"({', '.join(names)}) to its arguments, e.g. {{{names[0]}: {{...}}}}")  # fmt: skip
    if not names:
        raise ConfigError(f"model.name: auto has no candidate for {cfg.data.modality} {cfg.task.kind}; "
                          "list them in model.candidates")  # fmt: skip
    if len(set(names)) != len(names):
        raise ConfigError(f"model.candidates: {names} names a model twice")
    for name in names:
        if name in (AUTO, STACK):
            raise ConfigError(f"model.candidates: {name!r} is not a model family")
        try:
            check_model_fits(name, cfg.data.modality, cfg.task.kind)
        except ConfigError as err:
            raise ConfigError(str(err).replace("model.name:", "model.candidates:", 1)) from None
        try:
            check_model_args(name, m.args.get(name, {}))
        except ConfigError as err:
            raise ConfigError(str(err).replace("model.args.", f"model.args.{name}.", 1)) from None


def stack_args(cfg: ExperimentConfig, input_args: dict[str, Any], out_dim: int,
               accepted: Callable[[str, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """run.json's model arguments of an auto run: every candidate with the inputs its builder takes."""
    members = [{"name": name, "args": {**cfg.model.args.get(name, {}), **accepted(name, input_args), "out_dim": out_dim}}
               for name in candidates(cfg)]  # fmt: skip
    return {"members": members, "out_dim": out_dim}


def member_specs(info: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, args) of the models a run builds: a stack's members, or the one model."""
    model = info["model"]
    if model["name"] == STACK:
        return [(m["name"], m["args"]) for m in model["args"]["members"]]
    return [(model["name"], model["args"])]


# ---------------------------------------------------------------------------------- fitting


def _folds(n: int, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, k)
    return [(np.sort(np.concatenate(parts[:j] + parts[j + 1:])), np.sort(part)) for j, part in enumerate(parts)]


def _score(task: Task, monitor: str, outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The run's monitor metric on these outputs (a loss: the task's loss)."""
    name = monitor.removeprefix("val_").removeprefix("train_")
    if name == "loss":
        return float(task.loss(outputs, targets))
    # quick_metrics never raises; a metric it cannot compute on a fold (absent or NaN) ranks last
    return float(task.quick_metrics(task.predictions(outputs).numpy(), targets.numpy()).get(name, math.nan))


def _build(name: str, args: dict[str, Any], seed: int) -> nn.Module:
    torch.manual_seed(seed)  # a network's initial weights, as in a run of its own
    return build_model(name, **args)


def _out_of_fold(spec: tuple[str, dict[str, Any]], train: Dataset, folds: list, make: TrainerFactory, task: Task,
                 monitor: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[float], float]:  # fmt: skip
    """A family's outputs on each held-out fold, the targets, its fold scores, and its mean fit time."""
    outputs: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    scores, seconds = [], []
    for fit_rows, held_rows in folds:
        started = time.perf_counter()
        trainer = make(_build(*spec, seed), Subset(train, fit_rows.tolist()), None)
        trainer.fit()
        seconds.append(time.perf_counter() - started)
        out, y = trainer.predict(Subset(train, held_rows.tolist()))
        out = out.reshape(len(out), -1)
        if outputs is None:
            outputs = out.new_zeros(len(train), out.shape[1])
            targets = y.new_zeros((len(train), *y.shape[1:]))
        outputs[held_rows], targets[held_rows] = out, y
        scores.append(_score(task, monitor, out, y))
    return outputs, targets, scores, float(np.mean(seconds))


def _fit_blend(task: Task, o: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Softplus-positive weights (m,) and a bias (k,) minimising the task's loss of sum_j w_j o_j + b."""
    start = math.log(math.expm1(1.0 / len(o)))  # softplus(start) = 1/m: the plain mean
    raw = torch.full((len(o),), start, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(o.shape[2], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([raw, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = task.loss((torch.nn.functional.softplus(raw)[:, None, None] * o).sum(0) + bias, targets)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.nn.functional.softplus(raw).detach().numpy(), bias.detach().numpy()


def stack_weights(task: Task, outputs: list[torch.Tensor], targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative weights (one per family) and a bias (one per output) minimising the task's
    loss of the blended out-of-fold outputs; families with a negligible share are dropped and the
    rest refitted."""
    keep = list(range(len(outputs)))
    while True:
        w, bias = _fit_blend(task, torch.stack([outputs[j] for j in keep]).double(), targets)
        small = [j for j, share in zip(keep, w / w.sum(), strict=True) if share < NEGLIGIBLE_WEIGHT]
        if not small or len(keep) == 1:
            weights = np.zeros(len(outputs))
            weights[keep] = w
            return weights, bias
        keep = [j for j in keep if j not in small]


def _blend(weights: np.ndarray, bias: np.ndarray, outputs: list[torch.Tensor]) -> torch.Tensor:
    mixed = sum(float(w) * out.double() for w, out in zip(weights, outputs, strict=True))
    return (mixed + torch.as_tensor(bias)).float()


def fit_auto(cfg: ExperimentConfig, task: Task, info: dict[str, Any], train: Dataset, member_dir: Path,
             seed: int, make: TrainerFactory) -> Trainer:  # fmt: skip
    """Try every candidate by inner cross-validation, stack or pick, refit, and return the Trainer
    of the assembled stack with its epoch row and checkpoints written in `member_dir`."""
    specs = member_specs(info)
    monitor = cfg.train.monitor
    folds = _folds(len(train), min(cfg.model.folds, len(train)), seed)
    outputs, rows, targets = [], [], None
    for name, args in specs:
        out, targets, scores, seconds = _out_of_fold((name, args), train, folds, make, task, monitor, seed)
        outputs.append(out)
        rows.append({"name": name, "fold_scores": scores, "mean": float(np.mean(scores)),
                     "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0, "fit_s": seconds})  # fmt: skip
        console.print(f"auto: {name} inner {len(folds)}-fold {monitor} {rows[-1]['mean']:.4f} "
                      f"(sd {rows[-1]['sd']:.4f}), {seconds:.1f} s per fit")  # fmt: skip
    lower = lower_is_better(monitor)
    ranked = [rows[j]["mean"] if lower else -rows[j]["mean"] for j in range(len(rows))]
    best = min(range(len(rows)), key=lambda j: math.inf if math.isnan(ranked[j]) else ranked[j])
    if cfg.model.select == "stack" and len(specs) > 1:
        weights, bias = stack_weights(task, outputs, targets)
    else:
        weights, bias = np.eye(len(specs))[best], np.zeros(outputs[0].shape[1])
    stacked_score = _score(task, monitor, _blend(weights, bias, outputs), targets)
    members = []
    for j, (name, args) in enumerate(specs):
        rows[j]["weight"] = float(weights[j])
        model = _build(name, args, seed)
        if weights[j] > 0:
            refit = make(model, train, member_dir / "candidates" / name)
            refit.fit()
            model = _best_weights(refit, member_dir / "candidates" / name)
        members.append(model)
    stack = build_model(STACK, members=[{"name": n, "args": a} for n, a in specs], out_dim=int(task.out_dim))
    stack.members = nn.ModuleList(members)
    stack.weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
    stack.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    record = {"select": cfg.model.select, "monitor": monitor, "folds": len(folds), "families": rows,
              "best": rows[best]["name"], "stacked_out_of_fold": stacked_score, "bias": bias.tolist()}  # fmt: skip
    write_json(member_dir / SELECTION_FILE, record)
    final = make(stack, train, member_dir)
    final.record_fitted({"kept": ", ".join(r["name"] for r in rows if r["weight"] > 0)}, sum(r["fit_s"] for r in rows))
    return final


def _best_weights(trainer: Trainer, run_dir: Path) -> nn.Module:
    """A refitted family's model with its best checkpoint's weights (a network's best epoch). The
    checkpoints are then removed: the stack's own checkpoint holds these weights (a forest's
    would otherwise be stored four times); the family's metrics.jsonl stays."""
    import shutil

    from biomx.engine.checkpoint import load_checkpoint

    best = run_dir / "checkpoints" / "best.safetensors"
    if best.is_file():
        trainer.model.load_state_dict(load_checkpoint(best)[0])
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return trainer.model


# ---------------------------------------------------------------------------------- report


def report_section(member_dir: Path) -> dict[str, Any] | None:
    """"Model selection": each family's inner-CV score, weight and fit time, as the run's (first)
    member `member_dir` chose; None for a run that did not select."""
    path = member_dir / SELECTION_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    metric = record["monitor"].removeprefix("val_")
    rows = [[r["name"], f"{r['mean']:.4f} ± {r['sd']:.4f}", f"{r['weight']:.3f}", f"{r['fit_s']:.1f}"]
            for r in record["families"]]  # fmt: skip
    choice = ("a stack of the families with a weight above 0 (non-negative weights fitted on the out-of-fold "
              "outputs with the task's loss)" if record["select"] == "stack" else f"the best family, {record['best']}")  # fmt: skip
    text = (f"model.name: auto tried {len(rows)} families by {record['folds']}-fold cross-validation on the "
            f"training split (the {metric} of each held-out fold; mean ± sd) and kept {choice}. "
            f"Out-of-fold {metric} of the blend: {record['stacked_out_of_fold']:.4f} (its weights were fitted on "
            "those same outputs, so it is slightly optimistic; the test split is the honest number).")  # fmt: skip
    return {"title": "Model selection", "text": text,
            "table": {"header": ["family", f"inner-CV {metric}", "weight", "fit time per fold (s)"], "rows": rows},
            "json": record}  # fmt: skip
