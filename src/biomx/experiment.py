"""The one place that wires data + model + task + trainer for an experiment.

    run_dir = train(load_config("examples/pneumonia_resnet18.yaml"))
    evaluate_run(run_dir)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

import biomx
from biomx.config import ExperimentConfig, dump_config, load_config
from biomx.data.batching import collate_batch
from biomx.data.samples import Samples, encode_labels, encode_values
from biomx.data.splits import split_indices, warn_if_leaking
from biomx.engine import distributed as dist
from biomx.engine.checkpoint import atomic_write_text
from biomx.engine.logging import console
from biomx.engine.trainer import Trainer, seed_everything, select_device
from biomx.errors import BiomxError, ConfigError
from biomx.evaluation import evaluate_split, output_names, summary_line, write_run_report
from biomx.modalities import get_pipeline
from biomx.models.registry import build_model, check_model_args, suggest
from biomx.runs import environment, member_dirs, new_run_dir, read_json, write_csv, write_json
from biomx.tasks import quick_metric_names
from biomx.tasks.classification.task import (
    ClassificationTask,
    build_task,
    class_weights_from_counts,
)
from biomx.tasks.regression.task import RegressionTask, build_regression_task
from biomx.tasks.segmentation.task import SegmentationTask, build_segmentation_task
from biomx.uncertainty import mean_and_std, uncertainty_evaluation, uncertainty_section


@dataclass
class Prepared:
    """Everything an experiment needs before training starts."""

    cfg: ExperimentConfig
    data: Samples
    targets: torch.Tensor
    task: ClassificationTask | RegressionTask | SegmentationTask
    splits: dict[str, np.ndarray]
    datasets: dict[str, Dataset]
    info: dict[str, Any]  # run.json: model, task, preprocessing


def check_config(cfg: ExperimentConfig) -> None:
    """Cross-section checks that need the registry (run before any data is read)."""
    check_model_args(cfg.model.name, cfg.model.args)
    for key in ("in_channels", "out_dim"):
        if key in cfg.model.args:
            raise ConfigError(f"model.args.{key}: set automatically from the data and task; remove it")
    if (cfg.task.kind == "segmentation") != (cfg.data.source == "msd"):
        raise ConfigError("task.kind: segmentation reads image/mask pairs from data.source: msd "
                          "(a dataset.json + imagesTr/ + labelsTr/ folder), and msd data is for segmentation")
    if cfg.task.kind == "segmentation" and cfg.eval.mc_dropout:
        raise ConfigError("eval.mc_dropout: not available for segmentation yet; use model.ensemble")
    allowed = ["train_loss", "val_loss"] + [f"val_{m}" for m in quick_metric_names(cfg.task.kind)]
    if cfg.train.monitor not in allowed:
        raise ConfigError(f"train.monitor: unknown metric {cfg.train.monitor!r}"
                          f"{suggest(cfg.train.monitor, allowed)}; allowed: {', '.join(allowed)}")  # fmt: skip


def _splits(cfg: ExperimentConfig, data: Samples, targets: torch.Tensor) -> dict[str, np.ndarray]:
    s = cfg.data.split
    # Stratify on class labels; regression targets and multilabel sets split at random.
    labels = targets.numpy() if targets.ndim == 1 and cfg.task.kind == "classification" else None
    if s.method == "chromosome":
        return _chromosome_splits(s, data, labels)
    if s.method in ("scaffold", "cluster"):  # molecules: keep related structures in one split
        return get_pipeline(cfg.data.modality, cfg.task.kind).split(s, data)
    if s.method == "predefined":
        if not data.predefined or "train" not in data.predefined:
            raise ConfigError("data.split.method: 'predefined' needs an npz with train_/val_ arrays, "
                              f"or a CSV column {s.column!r} of train/val/test")  # fmt: skip
        train = data.predefined["train"]
        val = data.predefined.get("val")
        test = data.predefined.get("test")
        if s.holdout == "val":  # the official val split is the untouched test set
            if val is None:
                raise ConfigError("data.split.holdout: 'val' needs a val split in the source")
            val, test = None, val
        rest = train
        if test is None and s.test > 0:  # carve a stratified test split out of train
            part = split_indices(len(train), method="stratified", val=0.0, test=s.test, seed=s.seed,
                                 labels=None if labels is None else labels[train])  # fmt: skip
            rest, test = train[part["train"]], train[part["test"]]
        if val is None and s.val > 0:
            part = split_indices(len(rest), method="stratified", val=0.0, test=s.val, seed=s.seed + 1,
                                 labels=None if labels is None else labels[rest])  # fmt: skip
            rest, val = rest[part["train"]], rest[part["test"]]
        empty = np.zeros(0, dtype=np.int64)
        return {"train": rest, "val": empty if val is None else val, "test": empty if test is None else test}
    return split_indices(len(targets), method=s.method, val=s.val, test=s.test, seed=s.seed,
                         labels=labels, groups=data.groups)  # fmt: skip


def _chromosome_splits(s, data: Samples, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """Hold out whole chromosomes, so overlapping windows cannot leak between splits."""
    if data.chromosomes is None or any(c is None for c in data.chromosomes):
        raise ConfigError("data.split.method: 'chromosome' needs every record id to be an interval "
                          "like chr8:100-300 (or an intervals source)")  # fmt: skip
    chroms = data.chromosomes
    known = set(chroms.tolist())
    for key in ("val_chromosomes", "test_chromosomes"):
        missing = [c for c in getattr(s, key) if c not in known]
        if missing:
            raise ConfigError(f"data.split.{key}: {missing} not in the data (have {sorted(known)[:30]})")
    test = np.flatnonzero(np.isin(chroms, s.test_chromosomes))
    if s.val_chromosomes:
        val = np.flatnonzero(np.isin(chroms, s.val_chromosomes))
        train = np.flatnonzero(~np.isin(chroms, s.val_chromosomes + s.test_chromosomes))
    else:  # a stratified fraction of the remaining chromosomes' samples
        rest = np.flatnonzero(~np.isin(chroms, s.test_chromosomes))
        part = split_indices(len(rest), method="stratified", val=0.0, test=s.val, seed=s.seed,
                             labels=None if labels is None else labels[rest])  # fmt: skip
        train, val = rest[part["train"]], rest[part["test"]]
    return {"train": train, "val": val, "test": test}


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Read the data, split it, build the task and datasets. No files are written.

    Raises:
        BiomxError: any problem with the config or the data, as one line.
    """
    check_config(cfg)
    pipeline = get_pipeline(cfg.data.modality, cfg.task.kind)
    data = pipeline.load(cfg.data, cfg.task.classes)
    if len(data.labels) == 0:
        raise BiomxError(f"{cfg.data.path}: no readable samples")
    if cfg.task.kind == "segmentation":  # the masks stay in the pipeline's case cache
        targets = torch.arange(len(data.ids))
        splits = _splits(cfg, data, targets)
        task = build_segmentation_task(cfg.task.classes or data.default_classes, cfg.task.loss,
                                       cfg.task.min_component_size)  # fmt: skip
        task_info = {"kind": "segmentation", "classes": task.classes, "loss": task.loss_name,
                     "min_component_size": task.min_component_size}  # fmt: skip
    elif cfg.task.kind == "regression":
        targets = encode_values(data)
        splits = _splits(cfg, data, targets)
        columns = cfg.data.label_column if isinstance(cfg.data.label_column, list) else [cfg.data.label_column]
        names = [cfg.task.target_name] if cfg.task.target_name and len(columns) == 1 else columns
        task = build_regression_task(names, cfg.task.loss or "mse")
        task.fit_scaling(targets[splits["train"]].numpy())  # standardise on train; predict in units
        task_info = {"kind": "regression", "targets": task.targets, "loss": task.loss_name,
                     "mean": task.mean, "std": task.std}  # fmt: skip
    else:
        targets, classes, kind = encode_labels(data, cfg.task.classes, cfg.task.type)
        splits = _splits(cfg, data, targets)
        weights = cfg.task.class_weights
        if weights == "balanced":
            weights = class_weights_from_counts(targets[splits["train"]].numpy(), kind, len(classes))
        task = build_task(kind, classes, None if weights == "none" else weights,
                          cfg.task.label_smoothing, cfg.task.threshold)  # fmt: skip
        task_info = {"kind": task.kind, "classes": task.classes, "threshold": task.threshold}
    warn_if_leaking(data.groups, splits)
    data.extra["splits"] = splits  # for a pipeline's report sections (e.g. scaffold overlap)
    datasets, preprocessing, input_args = pipeline.build_datasets(data, targets, splits, cfg)
    info = {
        "biomx_version": biomx.__version__,
        "name": cfg.name,
        "model": {"name": cfg.model.name, "args": {**cfg.model.args, **input_args, "out_dim": task.out_dim}},
        "task": task_info,
        "preprocessing": preprocessing,
        "uncertainty": {"ensemble": cfg.model.ensemble, "mc_dropout": cfg.eval.mc_dropout},
    }
    return Prepared(cfg, data, targets, task, splits, datasets, info)


def _split_names(p: Prepared) -> list[str]:
    """The split ("train", "val", "test") of every sample, in sample order."""
    split_of = np.empty(len(p.targets), dtype=object)
    for name, idx in p.splits.items():
        split_of[idx] = name
    return split_of.tolist()


def _write_run_files(run_dir: Path, p: Prepared) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(p.cfg))
    write_json(run_dir / "run.json", p.info)
    labels = ["|".join(x) if isinstance(x, list) else x for x in p.data.labels]
    columns = {"id": p.data.ids, "label": labels, "split": _split_names(p)}
    if p.data.hashes:
        columns["sha256"] = p.data.hashes
    write_csv(run_dir / "split.csv", columns)
    write_json(run_dir / "data.json", {
        "source": p.cfg.data.source, "path": p.cfg.data.path, "source_sha256": p.data.source_sha256,
        "n": len(p.targets), "split_sizes": {k: len(v) for k, v in p.splits.items()},
        "classes": p.task.classes, "skipped": len(p.data.skipped),
    })  # fmt: skip
    if p.data.skipped:
        write_csv(run_dir / "skipped.csv", {"file": [f for f, _ in p.data.skipped],
                                            "reason": [r for _, r in p.data.skipped]})  # fmt: skip


def _check_same_split(run_dir: Path, p: Prepared) -> None:
    """A resumed or re-evaluated run must see exactly the data it was trained on."""
    import csv

    with open(run_dir / "split.csv", newline="") as f:
        saved = [(row["id"], row["split"]) for row in csv.DictReader(f)]
    now = list(zip(p.data.ids, _split_names(p), strict=True))
    if saved != now:
        first = next((i for i, (a, b) in enumerate(zip(saved, now, strict=False)) if a != b), min(len(saved), len(now)))
        raise BiomxError(f"{run_dir}: the data or its split changed since this run was made "
                         f"(first difference at sample {first + 1} of split.csv); start a new run")  # fmt: skip


def _trainer(p: Prepared, run_dir: Path | None, member: int = 0) -> Trainer:
    cfg, task = p.cfg, p.task
    # Ensemble members differ only in their seed: initial weights, batch order, dropout.
    settings = cfg.train.model_copy(update={"seed": cfg.train.seed + member})
    seed_everything(settings.seed)  # identical initial weights on every rank and every resume
    model = build_model(cfg.model.name, **p.info["model"]["args"])

    def metrics_fn(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return task.quick_metrics(task.predictions(outputs).numpy(), targets.numpy())

    return Trainer(
        model, task.loss, p.datasets["train"],
        val_data=p.datasets["val"] if len(p.datasets["val"]) else None,
        settings=settings, run_dir=run_dir, metrics_fn=metrics_fn, collate_fn=collate_batch,
        model_config=p.info, tensorboard=cfg.output.tensorboard,
    )  # fmt: skip


def train(cfg: ExperimentConfig, resume: str | Path | None = None) -> Path:
    """Run an experiment end to end: train, then evaluate on the test split and report.

    Args:
        cfg: a validated config (see `load_config`).
        resume: a run directory to continue (its own config.yaml is used).

    Returns:
        The run directory.

    Raises:
        BiomxError: bad data or config; `TrainingInterrupted` after Ctrl-C/SIGTERM.
    """
    dist.init_from_env(select_device(cfg.train.device))
    p = prepare(cfg)
    if resume is not None:
        run_dir = Path(resume)
        _check_same_split(run_dir, p)
    else:
        run_dir = Path(cfg.output.dir) / cfg.output.name if cfg.output.name else new_run_dir(cfg.output.dir, cfg.name)
        if dist.is_distributed():  # every rank must write into the same directory
            shared = [str(run_dir)]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_dir = Path(shared[0])
        if (run_dir / "run.json").exists():
            raise BiomxError(f"{run_dir}: already holds a run; use --resume {run_dir} or another output.name")
        if dist.is_main():
            _write_run_files(run_dir, p)
            console.print(f"run: {run_dir}  ({', '.join(f'{k} {len(v)}' for k, v in p.splits.items())})")
    members = member_dirs(run_dir, cfg.model.ensemble)
    for k, member_dir in enumerate(members):
        if len(members) > 1 and dist.is_main():
            console.print(f"ensemble member {k + 1}/{len(members)} (seed {cfg.train.seed + k})")
        trainer = _trainer(p, member_dir, member=k)
        # On resume, finished members return at once and the interrupted one continues.
        trainer.fit(resume=resume is not None and (member_dir / "checkpoints" / "last.safetensors").is_file())
    _finish(p, trainer, run_dir)
    return run_dir


def _test_predictions(p: Prepared, trainer: Trainer, run_dir: Path) -> tuple[list[np.ndarray], torch.Tensor]:
    """Test predictions (task space) of every ensemble member's best checkpoint and dropout pass."""
    from biomx.engine.checkpoint import load_checkpoint

    pipeline = get_pipeline(p.cfg.data.modality, p.cfg.task.kind)
    passes, mc = [], p.cfg.eval.mc_dropout
    targets = torch.zeros(0)
    for member_dir in member_dirs(run_dir, p.cfg.model.ensemble):
        best = member_dir / "checkpoints" / "best.safetensors"
        if best.is_file():
            weights, _ = load_checkpoint(best)
            trainer.model.load_state_dict(weights)
        trainer.net = pipeline.inference_model(trainer.model, p.info["preprocessing"])  # e.g. strand averaging
        for k in range(max(mc, 1)):
            torch.manual_seed(p.cfg.train.seed + k)  # reproducible dropout masks
            outputs, targets = trainer.predict(p.datasets["test"], batch_size=p.cfg.eval.batch_size,
                                               mc_dropout=mc > 0)  # fmt: skip
            passes.append(p.task.predictions(outputs).numpy())
    return passes, targets


def _segment_test(p: Prepared, trainer: Trainer, run_dir: Path) -> tuple[dict[str, Any], list[dict]]:
    """Sliding-window segmentation of every test case by the best checkpoint(s) of every member."""
    import copy

    from biomx.engine.checkpoint import load_checkpoint

    models = []
    for member_dir in member_dirs(run_dir, p.cfg.model.ensemble):
        model = copy.deepcopy(trainer.model)
        best = member_dir / "checkpoints" / "best.safetensors"
        if best.is_file():
            model.load_state_dict(load_checkpoint(best)[0])
        models.append(model)
    pipeline = get_pipeline(p.cfg.data.modality, p.cfg.task.kind)
    return pipeline.evaluate_test(models, p.task, p.datasets["test"], p.info["preprocessing"], p.cfg, run_dir,
                                  trainer.device, trainer._autocast)  # fmt: skip


def _finish(p: Prepared, trainer: Trainer, run_dir: Path) -> dict[str, Any] | None:
    """Evaluate the best checkpoint(s) on the test split and write the report (rank 0 writes)."""
    dist.barrier()
    evaluation, examples, extra = None, [], []
    test = p.datasets["test"]
    if len(test) and p.task.kind == "segmentation":
        if dist.is_main():  # whole cases, one at a time: no batched test predictions to gather
            evaluation, extra = _segment_test(p, trainer, run_dir)
            console.print(summary_line(evaluation))
    elif len(test):
        pipeline = get_pipeline(p.cfg.data.modality, p.cfg.task.kind)
        passes, targets = _test_predictions(p, trainer, run_dir)
        if dist.is_main():
            probs, std = mean_and_std(passes)
            ids = [p.data.ids[i] for i in p.splits["test"]]
            evaluation = evaluate_split(p.task, probs, targets.numpy(), ids, run_dir, p.cfg.eval,
                                        p.cfg.train.seed, std=std)  # fmt: skip
            console.print(summary_line(evaluation))
            examples, extra = pipeline.explain(trainer.model, p.task, p.data, p.splits["test"], test, probs,
                                               targets.numpy(), p.cfg.eval.explain, p.cfg)  # fmt: skip
            if std is not None:
                unc = uncertainty_evaluation(p.task.kind, output_names(p.task), probs, std, targets.numpy())
                extra = [uncertainty_section(unc), *extra]
            found = {section["title"]: section["json"] for section in extra if "json" in section}
            if found:
                write_json(run_dir / "explanations.json", found)
    if dist.is_main():
        notes = [f"split sizes: { {k: len(v) for k, v in p.splits.items()} }"]
        notes += [f"skipped: {f} ({r})" for f, r in p.data.skipped[:50]]
        if len(p.data.skipped) > 50:
            notes.append(f"... and {len(p.data.skipped) - 50} more (see skipped.csv)")
        write_run_report(run_dir, f"biomx run: {run_dir.name}", evaluation, examples, extra,
                         p.cfg.model_dump(mode="json"), environment(trainer.device, trainer.world), notes)  # fmt: skip
    dist.barrier()
    return evaluation


def resume_run(run_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Continue an interrupted run from its last checkpoint (same config, same split)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    if not any((d / "checkpoints" / "last.safetensors").is_file() for d in member_dirs(run_dir, cfg.model.ensemble)):
        raise BiomxError(f"{run_dir}: no checkpoints/last.safetensors to resume from")
    return train(cfg, resume=run_dir)


def evaluate_run(run_dir: str | Path) -> dict[str, Any] | None:
    """Re-evaluate a run's best checkpoint on its test split; rewrite metrics and report."""
    run_dir = Path(run_dir)
    read_json(run_dir / "run.json")  # a clear error if this is not a run directory
    cfg = load_config(run_dir / "config.yaml")
    p = prepare(cfg)
    _check_same_split(run_dir, p)
    cfg.train.progress = False
    trainer = _trainer(p, None)
    return _finish(p, trainer, run_dir)
