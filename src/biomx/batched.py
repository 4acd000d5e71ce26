"""Test evaluation and prediction for tasks whose outputs are one row per sample.

Classification and regression share these (a dense task such as segmentation has its own).
Every ensemble member's best checkpoint, and every Monte Carlo dropout pass, gives predictions
in task space; `uncertainty.mean_and_std` combines them, the task scores the mean, and the
modality explains a few test samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.engine import distributed as dist
from biomx.engine.trainer import enable_dropout
from biomx.errors import BiomxError
from biomx.evaluation import evaluate_split, std_columns
from biomx.explain.sanity import explanation_checks
from biomx.fairness import subgroup_sections
from biomx.protocols import PredictRequest, RowTask, TestRun, TestView
from biomx.runs import write_json
from biomx.uncertainty import mean_and_std, uncertainty_evaluation, uncertainty_section


def test_passes(task: RowTask, run: TestRun, split: str = "test") -> tuple[list[np.ndarray], torch.Tensor]:
    """Predictions (task space) of a split ("test"; "val" for what a task settles on the validation
    split, e.g. a decision threshold) by every member's best checkpoint and dropout pass."""
    trainer, mc = run.trainer, run.cfg.eval.mc_dropout
    passes, targets = [], torch.zeros(0)
    for weights in run.member_weights:
        if weights is not None:
            trainer.model.load_state_dict(weights)
        trainer.net = run.modality.inference_model(trainer.model, run.preprocessing)  # e.g. strand averaging
        for k in range(max(mc, 1)):
            torch.manual_seed(run.cfg.train.seed + k)  # reproducible dropout masks
            outputs, targets = trainer.predict(run.datasets[split], batch_size=run.cfg.eval.batch_size,
                                               mc_dropout=mc > 0)  # fmt: skip
            passes.append(task.predictions(outputs).numpy())
    return passes, targets


def mean_predictions(task: RowTask, run: TestRun, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A split's mean prediction over every member and dropout pass, and its targets (None when the
    run has no such rows); computed once per run (`TestRun.mean_predictions`)."""
    if split not in run.mean_predictions:
        data = run.datasets.get(split)
        if data is None or not len(data):
            return None
        passes, targets = test_passes(task, run, split)
        run.mean_predictions[split] = (mean_and_std(passes)[0], targets.numpy())
    return run.mean_predictions[split]


def evaluate_test(task: RowTask, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
    """Score the mean test prediction, explain a few samples, add the uncertainty section."""
    passes, targets = test_passes(task, run)
    if not dist.is_main():
        return None, []
    preds, std = mean_and_std(passes)
    truth = targets.numpy()
    test_index = run.splits["test"]
    ids = [run.samples.ids[i] for i in test_index]
    evaluation = evaluate_split(task, preds, truth, ids, run.run_dir, run.cfg.eval, run.cfg.train.seed, std=std)
    view = TestView(run.samples, test_index, run.datasets["test"], preds, truth, run.splits, run.run_dir)
    groups = subgroup_sections(task, run, preds, truth, evaluation)  # eval.subgroups: [] without
    sections = [*groups, *run.modality.explain(run.trainer.model, task, view, run.cfg.eval.explain, run.cfg)]
    sections += explanation_checks(run.trainer.model, task, run.modality, view, run.cfg.eval.explain, run.cfg)
    if std is not None:
        unc = uncertainty_evaluation(task, preds, std, truth)
        sections = [uncertainty_section(unc), *sections]
    found = {section["title"]: section["json"] for section in sections if "json" in section}
    if found:
        write_json(run.run_dir / "explanations.json", found)
    return evaluation, sections


def batches(x: Any, batch_size: int, rows: range | None = None):
    """A stacked tensor is split; a dataset with `__getitems__` (molecules) is fetched in chunks.
    `rows`: only these (contiguous) rows, e.g. this rank's share under torchrun."""
    rows = range(len(x)) if rows is None else rows
    if isinstance(x, torch.Tensor):
        yield from x[rows.start:rows.stop].split(batch_size)
        return
    for start in range(rows.start, rows.stop, batch_size):
        yield x.__getitems__(list(range(start, min(start + batch_size, rows.stop))))[0]


def gathered(array: np.ndarray | None) -> np.ndarray | None:
    """Every rank's contiguous share of rows, concatenated in rank (= input) order."""
    if array is None or not dist.is_distributed():
        return array
    return dist.gather_cat(torch.from_numpy(np.ascontiguousarray(array))).numpy()


@torch.no_grad()
def predict(task: RowTask, request: PredictRequest) -> dict[str, list]:
    """Prediction columns ("path", the task's columns, `<column>_std` for several passes)."""
    info, modality = request.info, request.modality
    pre = info["preprocessing"]
    passes_per_model = (info.get("uncertainty", {}).get("mc_dropout", 0) if request.mc_dropout is None
                        else request.mc_dropout)  # fmt: skip
    if request.engine is not None:
        preds, std, names = engine_predictions(request, passes_per_model)
    else:
        x, names, failures = modality.read_inputs(pre, request.inputs, request.skip_errors)
        request.failures.extend(failures)
        # Under torchrun every rank reads the inputs and runs the models on its share of the rows.
        passes = model_passes(task, request, x, names, passes_per_model, dist.shard(len(x)))
        preds, std = mean_and_std([gathered(p) for p in passes])
    columns: dict[str, list] = {"path": names}
    for name, values in task.prediction_columns(preds).items():
        columns[name] = [f"{v:.6f}" if isinstance(v, float) else v for v in values.tolist()]
    if std is not None:
        columns.update(std_columns(task, std))
    return columns


def model_passes(task: RowTask, request: PredictRequest, x: Any, names: list[str], passes_per_model: int,
                 rows: range | None = None) -> list[np.ndarray]:  # fmt: skip
    """Task-space predictions of every member and dropout pass (PyTorch), of `rows` (default: all)."""
    rows = range(len(x)) if rows is None else rows
    passes = []
    for model in request.models:
        model = request.modality.inference_model(model, request.info["preprocessing"]).eval()
        for k in range(max(passes_per_model, 1)):
            if passes_per_model > 0:
                torch.manual_seed(k)  # reproducible dropout masks
                enable_dropout(model)
            preds, start = [], rows.start
            for batch in batches(x, request.batch_size, rows):
                out = model(batch)
                _check_finite(out, names, start)  # a diverged model must not label NaN as a class
                preds.append(task.predictions(out))
                start += request.batch_size
            passes.append(torch.cat(preds).numpy() if preds else np.zeros((0, task.out_dim), np.float32).squeeze(-1))
    return passes


def engine_predictions(request: PredictRequest, passes_per_model: int
                       ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:  # fmt: skip
    """(mean predictions, std across members or None, names) from an export engine
    (`biomx.export.engines`), which runs the exported graph on the modality's raw inputs."""
    engine = request.engine
    if passes_per_model > 0:
        raise BiomxError(f"--mc-dropout: the {engine.name} engine runs the exported graph, which has no "
                         "dropout; use --engine torch for Monte Carlo dropout, or --mc-dropout 0")  # fmt: skip
    raw, names, failures = request.modality.read_raw(request.info["preprocessing"], request.inputs,
                                                     request.skip_errors)  # fmt: skip
    request.failures.extend(failures)
    preds, stds, rows = [], [], dist.shard(len(raw))  # this rank's share under torchrun
    for start in range(rows.start, rows.stop, request.batch_size):
        mean, std = engine.run(raw[start:min(start + request.batch_size, rows.stop)])
        _check_finite(torch.from_numpy(np.asarray(mean)), names, start)
        preds.append(mean)
        stds.append(std)
    if not preds:
        mean, std = engine.run(raw[:0])
        return gathered(np.asarray(mean)), gathered(std), names
    return (gathered(np.concatenate(preds)), None if stds[0] is None else gathered(np.concatenate(stds)),
            names)  # fmt: skip


def _check_finite(outputs: Any, names: list[str], start: int) -> None:
    """Refuse NaN/Inf model outputs (a diverged model) with one line naming the first input hit."""
    tensors = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    for out in tensors:
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or not out.numel():
            continue
        bad = ~torch.isfinite(out.reshape(len(out), -1)).all(dim=1) if out.dim() else ~torch.isfinite(out)[None]
        if bad.any():
            k = start + int(bad.nonzero()[0, 0])
            name = names[k] if k < len(names) else f"input {k + 1}"
            raise BiomxError(f"{name}: the model's output is not finite (NaN/Inf); the model or this input "
                             "is broken (a diverged run: lower train.optimizer.lr and train again)")  # fmt: skip


def default_files_dir(output: Path | None, suffix: str) -> Path:
    """`<output stem>_<suffix>/` beside the output CSV, else `./<suffix>/`."""
    return output.with_name(output.stem + f"_{suffix}") if output else Path(suffix)
