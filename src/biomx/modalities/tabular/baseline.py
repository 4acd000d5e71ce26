"""A gradient-boosted tree baseline (LightGBM) on the same split and the same encoded columns,
scored by the run's own task, so the report shows whether the network earned its keep.

The booster is trained with the task's own loss: its gradient and the diagonal of its Hessian
with respect to the raw outputs come from autograd (`task.loss`), so a binary, multiclass,
multilabel or regression task (class weights, label smoothing, missing multi-task labels
included) needs no objective of its own, and no task is named here. Its raw outputs go through
`task.predictions` and `task.evaluate`, exactly as the network's. Early stopping on the
validation split (the task's loss). The booster is saved in the run folder in LightGBM's own
text format (`Booster.save_model`, baseline_lightgbm.txt), never pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.protocols import Task, TestView

HESSIAN_FLOOR = 1e-6  # Newton steps need a positive curvature; a flat loss gets this much
EARLY_STOPPING_ROUNDS = 50
BOOSTER_FILE = "baseline_lightgbm.txt"  # in the run folder


def _loss_terms(task: Task, raw: np.ndarray, targets: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(gradient, Hessian diagonal) of the summed task loss at raw outputs (N, k)."""
    z = torch.tensor(raw.reshape(len(targets), k), dtype=torch.float64, requires_grad=True)
    loss = task.loss(z, targets) * len(targets)  # the task's mean -> a sum: per-row Newton steps
    (grad,) = torch.autograd.grad(loss, z, create_graph=True)
    hess = torch.zeros_like(z)
    for j in range(k):  # rows are independent: d(sum_i g_ij)/dz_ij is row i's own curvature
        (second,) = torch.autograd.grad(grad[:, j].sum(), z, retain_graph=j < k - 1, allow_unused=True)
        if second is not None:
            hess[:, j] = second[:, j]
    g = grad.detach().numpy()
    h = np.maximum(hess.detach().numpy(), HESSIAN_FLOOR)
    return (g[:, 0], h[:, 0]) if k == 1 else (g, h)


def row_separable(task: Task, targets: torch.Tensor, k: int, rows: int = 64) -> bool:
    """Whether the task's loss is a sum over rows (one row's output moves no other row's gradient);
    only then is the Hessian diagonal above exact. A ranking loss (Cox) is not."""
    y = targets[:rows]
    if len(y) < 2:
        return True
    z = torch.linspace(-1.0, 1.0, len(y) * k, dtype=torch.float64).reshape(len(y), k)

    def grad(at: torch.Tensor) -> torch.Tensor:
        at = at.clone().requires_grad_(True)
        return torch.autograd.grad(task.loss(at, y) * len(y), at)[0]

    moved = z.clone()
    moved[0] += 1.0
    return bool(torch.allclose(grad(z)[1:], grad(moved)[1:], atol=1e-9))


def train_booster(task: Task, x: np.ndarray, targets: torch.Tensor, splits: dict[str, np.ndarray],
                  categorical: list[int], rounds: int, seed: int) -> Any:  # fmt: skip
    """A LightGBM booster fitted to the training rows with the task's loss, early-stopped on val."""
    import lightgbm as lgb

    k = int(task.out_dim)
    train, val = splits["train"], splits.get("val", np.zeros(0, np.int64))
    y_train, y_val = targets[torch.as_tensor(train)], targets[torch.as_tensor(val)]

    def objective(raw: np.ndarray, data: Any) -> tuple[np.ndarray, np.ndarray]:
        return _loss_terms(task, raw, y_train, k)

    def val_loss(raw: np.ndarray, data: Any) -> tuple[str, float, bool]:
        z = torch.tensor(np.asarray(raw).reshape(len(y_val), k), dtype=torch.float64)
        return "task_loss", float(task.loss(z, y_val)), False

    params = {"objective": objective, "learning_rate": 0.05, "num_leaves": 15, "verbose": -1,
              "min_data_in_leaf": max(2, min(20, len(train) // 20)), "feature_fraction": 0.9,
              "lambda_l2": 1.0, "seed": seed, "deterministic": True, "num_threads": torch.get_num_threads(),
              "metric": "None", "max_cat_to_onehot": 8}  # fmt: skip
    if k > 1:
        params["num_class"] = k
    dtrain = lgb.Dataset(x[train], free_raw_data=False, categorical_feature=categorical or "auto")
    callbacks, valid = [], []
    if len(val):
        valid = [lgb.Dataset(x[val], reference=dtrain, categorical_feature=categorical or "auto")]
        callbacks = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
    return lgb.train(params, dtrain, num_boost_round=rounds, valid_sets=valid, feval=val_loss if valid else None,
                     callbacks=callbacks)  # fmt: skip


def raw_outputs(booster: Any, x: np.ndarray, k: int) -> torch.Tensor:
    return torch.as_tensor(np.asarray(booster.predict(x, raw_score=True)).reshape(len(x), k), dtype=torch.float32)


def baseline_section(task: Task, test: TestView, cfg: ExperimentConfig, categorical: list[int]) -> dict | None:
    """The report section comparing the network with LightGBM on the test split (None when the
    task is not scored one row per sample, or LightGBM is missing)."""
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        return {"title": "Baseline: LightGBM", "text": "LightGBM is not installed (pip install 'biomx[tabular]'); "
                "no gradient-boosted tree baseline was trained."}  # fmt: skip
    data = test.data
    if not hasattr(task, "evaluate") or not row_separable(task, data.targets[torch.as_tensor(test.splits["train"])],
                                                          int(task.out_dim)):  # fmt: skip
        return None  # a task scored otherwise (its own baseline, if any, is in its own sections)
    x = data.x.numpy()
    booster = train_booster(task, x, data.targets, test.splits, categorical, cfg.data.tabular.baseline_rounds,
                            cfg.train.seed)  # fmt: skip
    preds = task.predictions(raw_outputs(booster, x[test.index], int(task.out_dim))).numpy()
    e = cfg.eval
    ours = task.evaluate(preds, test.targets, n_bootstrap=e.bootstrap, ci=e.ci, seed=cfg.train.seed)
    network = task.evaluate(test.predictions, test.targets, n_bootstrap=e.bootstrap, ci=e.ci, seed=cfg.train.seed)
    saved = None
    if test.run_dir is not None:  # LightGBM's own text format (never pickle): lightgbm.Booster(model_file=...)
        saved = test.run_dir / BOOSTER_FILE
        booster.save_model(str(saved))
    rows = []
    for name in ours.get("headline", list(ours["metrics"])):
        a, b = network["metrics"].get(name, {}), ours["metrics"].get(name, {})
        rows.append([name, _shown(a), _shown(b)])
    text = (f"A LightGBM booster trained on the same training split and encoded columns ({booster.best_iteration or booster.current_iteration()} "
            f"trees, early stopping on the validation split with the task's own loss), scored on the same "
            f"{len(test.index)} test rows by the same evaluation. If it matches or beats the network, the "
            "network has not earned its keep on this table.")  # fmt: skip
    return {"title": "Baseline: LightGBM on the same split", "text": text,
            "table": {"header": ["metric", f"network ({cfg.model.name})", "LightGBM"], "rows": rows},
            "json": {"network": network["metrics"], "lightgbm": ours["metrics"],
                     "best_iteration": int(booster.best_iteration or booster.current_iteration()),
                     "booster_file": saved.name if saved else None}}  # fmt: skip


def _shown(metric: dict[str, Any]) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    value = f"{metric['value']:.3f}"
    if metric.get("ci_low") is not None and metric.get("ci_high") is not None:
        value += f" [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"
    return value
