"""Test evaluation and `biomx predict` for the survival task.

Evaluation runs every ensemble member's best weights (and dropout pass) over the training and
test splits: the training split gives the censoring weights of the IPCW metrics and, for a Cox
model, the Breslow baseline hazard, written to survival_baseline.json so that `biomx predict`
can give S(t). A classical Cox model on the same inputs is scored beside the network when the
inputs are one flat feature vector per sample.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from biomx.batched import batches
from biomx.engine import distributed as dist
from biomx.engine.trainer import enable_dropout
from biomx.errors import BiomxError
from biomx.explain.sanity import explanation_checks
from biomx.protocols import PredictRequest, TestRun, TestView
from biomx.runs import read_json, write_csv, write_json
from biomx.tasks.survival import baseline as base
from biomx.tasks.survival import scoring
from biomx.tasks.survival.targets import check_has_events

if TYPE_CHECKING:
    from biomx.tasks.survival.task import SurvivalTask

BASELINE_FILE = "survival_baseline.json"


def _passes(task: SurvivalTask, run: TestRun, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Mean task-space prediction over every member's best weights and dropout pass, and targets."""
    trainer, mc = run.trainer, run.cfg.eval.mc_dropout
    passes, targets = [], torch.zeros(0, 2)
    for weights in run.member_weights:
        if weights is not None:
            trainer.model.load_state_dict(weights)
        trainer.net = run.modality.inference_model(trainer.model, run.preprocessing)
        for k in range(max(mc, 1)):
            torch.manual_seed(run.cfg.train.seed + k)  # reproducible dropout masks
            outputs, targets = trainer.predict(data, batch_size=run.cfg.eval.batch_size, mc_dropout=mc > 0)
            passes.append(task.predictions(outputs).numpy())
    return np.mean(passes, axis=0), targets.numpy().astype(np.float64)


def _reference(run: TestRun, train_truth: np.ndarray) -> tuple:
    """(log-risk, survival function, note) of a classical Cox model, or (None, None, why not)."""
    x_train, x_test = base.flat_features(run.datasets["train"]), base.flat_features(run.datasets["test"])
    if x_train is None or x_test is None:
        return None, None, "no linear baseline for this input (it is not one flat feature vector per sample)"
    fitted, note = base.fit_cox_ph(x_train, train_truth[:, 0], train_truth[:, 1])
    if fitted is None:
        return None, None, note
    risk, _ = base.cox_ph_predict(fitted, x_test, np.zeros(1))
    return risk, lambda times: base.cox_ph_predict(fitted, x_test, times)[1], note


def evaluate_test(task: SurvivalTask, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
    """Score the test split; write test_metrics.json, predictions_test.csv and (Cox) the baseline."""
    train_preds, train_truth = _passes(task, run, run.datasets["train"])
    preds, truth = _passes(task, run, run.datasets["test"])
    if not dist.is_main():
        return None, []
    check_has_events(train_truth, "the training split", task.columns[1])
    if not np.isfinite(preds).all() or not np.isfinite(train_preds).all():
        raise BiomxError("evaluate: predictions contain NaN or inf; the model diverged (lower the learning rate)")
    if task.model == "cox":
        task.baseline = base.breslow(train_truth[:, 0], train_truth[:, 1], task.risk(train_preds))
        write_json(run.run_dir / BASELINE_FILE, task.baseline)
    evaluation = scoring.evaluate(task, preds, truth, train_truth, n_bootstrap=run.cfg.eval.bootstrap,
                                  ci=run.cfg.eval.ci, seed=run.cfg.train.seed,
                                  reference=_reference(run, train_truth))  # fmt: skip
    write_json(run.run_dir / "test_metrics.json", evaluation)
    ids = [run.samples.ids[i] for i in run.splits["test"]]
    columns: dict[str, list] = {"id": ids, "time": [f"{t:.10g}" for t in truth[:, 0]],
                                "event": [int(e) for e in truth[:, 1]]}  # fmt: skip
    columns.update({k: [f"{v:.6f}" for v in col.tolist()] for k, col in task.prediction_columns(preds).items()})
    write_csv(run.run_dir / "predictions_test.csv", columns)
    view = TestView(run.samples, run.splits["test"], run.datasets["test"], preds, truth, run.splits)
    sections = run.modality.explain(run.trainer.model, task, view, run.cfg.eval.explain, run.cfg)
    sections += explanation_checks(run.trainer.model, task, run.modality, replace(view, run_dir=run.run_dir),
                                   run.cfg.eval.explain, run.cfg)  # fmt: skip
    found = {section["title"]: section["json"] for section in sections if "json" in section}
    if found:
        write_json(run.run_dir / "explanations.json", found)
    return evaluation, sections


def load_baseline(task: SurvivalTask, run_dir: Path | None) -> None:
    """A Cox run's Breslow baseline, from the run directory (written by its test evaluation)."""
    if task.model != "cox" or task.baseline is not None:
        return
    path = Path(run_dir or ".") / BASELINE_FILE
    if run_dir is None or not path.is_file():
        raise BiomxError(f"{path}: missing; a Cox survival run needs its baseline hazard for S(t) "
                         "(written when the test split is evaluated, by `biomx train` or `biomx evaluate RUN`; "
                         "a run without a test split has none)")  # fmt: skip
    task.baseline = read_json(path)


@torch.no_grad()
def predict(task: SurvivalTask, request: PredictRequest) -> dict[str, list]:
    """Columns "path", "risk" and "survival_at_<h>" per horizon (ensemble and dropout means)."""
    if request.engine is not None:  # the Cox baseline hazard and horizons live beside the run, not in a graph
        raise BiomxError(f"--engine {request.engine.name}: a survival run predicts with its PyTorch models "
                         "only; use --engine torch")  # fmt: skip
    load_baseline(task, request.run_dir)
    pre = request.info["preprocessing"]
    mc = request.info.get("uncertainty", {}).get("mc_dropout", 0) if request.mc_dropout is None else request.mc_dropout
    x, names, failures = request.modality.read_inputs(pre, request.inputs, request.skip_errors)
    request.failures.extend(failures)
    passes = []
    for model in request.models:
        model = request.modality.inference_model(model, pre).eval()
        for k in range(max(mc, 1)):
            if mc > 0:
                torch.manual_seed(k)  # reproducible dropout masks
                enable_dropout(model)
            outputs = [model(batch) for batch in batches(x, request.batch_size)]
            preds = task.predictions(torch.cat(outputs)) if outputs else torch.zeros(0, max(task.out_dim, 1))
            if not torch.isfinite(preds).all():
                raise BiomxError("the model's output is not finite (NaN/Inf): a diverged run; "
                                 "lower train.optimizer.lr and train again")  # fmt: skip
            passes.append(preds.numpy())
    preds = np.mean(passes, axis=0)
    columns: dict[str, list] = {"path": names}
    for name, values in task.prediction_columns(preds).items():
        columns[name] = [f"{v:.6f}" for v in values.tolist()]
    return columns
