"""The one place that wires data + model + task + trainer for an experiment.

    run_dir = train(load_config("examples/pneumonia_resnet18.yaml"))
    evaluate_run(run_dir)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from biomx import selection
from biomx.card.write import card_section, write_model_card
from biomx.config import DataConfig, ExperimentConfig, dump_config, load_config
from biomx.data.batching import collate_batch
from biomx.data.samples import Samples
from biomx.data.splits import predefined_splits, split_indices, warn_if_duplicated, warn_if_leaking
from biomx.data_audit.audit import audit_sections, write_run_audit
from biomx.engine import distributed as dist
from biomx.engine import fsdp
from biomx.engine.callbacks import Callback
from biomx.engine.checkpoint import atomic_write_text, load_checkpoint
from biomx.engine.logging import console
from biomx.engine.mlflow_logger import check_tracking, tracking_callbacks
from biomx.engine.runtime import seed_everything, select_device
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.engine.transfer import check_init_from, transfer_sections
from biomx.engine.transfer import start as start_transfer
from biomx.errors import BiomxError, ConfigError
from biomx.evaluation import summary_line, write_run_report
from biomx.fairness import check_subgroups
from biomx.fairness.training import check_training, fair_training
from biomx.modalities import get_modality
from biomx.models.registry import (
    accepted_inputs,
    build_model,
    build_recorded,
    check_model_args,
    check_model_fits,
    suggest,
)
from biomx.privacy.baseline import baseline_sections, twin_config, twin_resume
from biomx.privacy.dp import check_run as check_private_run
from biomx.privacy.report import privacy_sections
from biomx.protocols import FittedModel, Modality, Task, TaskType, TestRun
from biomx.report.config_view import run_config
from biomx.runs import environment, member_dirs, new_run_dir, read_json, write_csv, write_json
from biomx.tasks import get_task
from biomx.version import __version__


@dataclass
class Prepared:
    """Everything an experiment needs before training starts."""

    cfg: ExperimentConfig
    modality: Modality
    data: Samples
    targets: torch.Tensor
    task: Task
    splits: dict[str, np.ndarray]
    datasets: dict[str, Dataset]
    info: dict[str, Any]  # run.json: model, task, preprocessing


def check_config(cfg: ExperimentConfig) -> tuple[Modality, TaskType]:
    """Cross-section checks that need the registries (run before any data is read)."""
    modality, task_type = get_modality(cfg.data.modality), get_task(cfg.task.kind)
    selection.check_config(cfg)
    if cfg.model.name != selection.AUTO:
        check_model_fits(cfg.model.name, cfg.data.modality, cfg.task.kind)  # before its arguments: a wrong model first
        check_model_args(cfg.model.name, cfg.model.args)
    for key in ("in_channels", "out_dim"):
        if key in cfg.model.args:
            raise ConfigError(f"model.args.{key}: set automatically from the data and task; remove it")
    modality.check_config(cfg)
    task_type.check_config(cfg, modality)
    allowed = ["train_loss", "val_loss"] + [f"val_{m}" for m in task_type.quick_metric_names]
    if cfg.train.monitor not in allowed:
        raise ConfigError(f"train.monitor: unknown metric {cfg.train.monitor!r}"
                          f"{suggest(cfg.train.monitor, allowed)}; allowed: {', '.join(allowed)}")  # fmt: skip
    return modality, task_type


def make_splits(cfg: ExperimentConfig, modality: Modality, data: Samples, labels: np.ndarray | None
                ) -> dict[str, np.ndarray]:  # fmt: skip
    """train/val/test indices: a modality's own method (e.g. by structure or by locus), the source's
    predefined split, or a seeded random / stratified / grouped split."""
    s = cfg.data.split
    if s.method in modality.split_methods:
        return modality.split(cfg, data, labels)
    if s.method == "predefined":
        return predefined_splits(s, data.predefined, labels)
    return split_indices(len(data.ids), method=s.method, val=s.val, test=s.test, seed=s.seed,
                         labels=labels, groups=data.groups)  # fmt: skip


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Read the data, split it, build the task and datasets. No files are written.

    Raises:
        BiomxError: any problem with the config or the data, as one line.
    """
    modality, task_type = check_config(cfg)
    data = task_type.load(cfg, modality)
    if len(data.labels) == 0:
        raise BiomxError(f"{cfg.data.path}: no readable samples")
    check_subgroups(cfg, modality, data)  # eval.subgroups: a missing column is refused before training
    check_training(cfg)  # train.fairness: its refusals, before any run file
    targets, labels = task_type.targets(cfg, data)
    splits = make_splits(cfg, modality, data, labels)
    task = task_type.build(cfg, data, targets, splits["train"])
    warn_if_leaking(data.groups, splits)
    _warn_if_duplicated(modality, data, splits)
    datasets, preprocessing, input_args = task_type.build_datasets(cfg, modality, data, targets, splits)
    if cfg.model.name == selection.AUTO:  # the families tried, as the stack they become
        model = {"name": selection.STACK, "args": selection.stack_args(cfg, input_args, task.out_dim, accepted_inputs)}
    else:
        model = {"name": cfg.model.name, "args": {**cfg.model.args, **accepted_inputs(cfg.model.name, input_args),
                                                  "out_dim": task.out_dim}}  # fmt: skip
    info = {
        "biomx_version": __version__,
        "name": cfg.name,
        "modality": cfg.data.modality,
        "model": model,
        "task": task.info(),
        "preprocessing": preprocessing,
        "uncertainty": {"ensemble": cfg.model.ensemble, "mc_dropout": cfg.eval.mc_dropout},
    }
    return Prepared(cfg, modality, data, targets, task, splits, datasets, info)


def _split_names(p: Prepared) -> list[str]:
    """The split ("train", "val", "test") of every sample, in sample order."""
    split_of = np.empty(len(p.targets), dtype=object)
    for name, idx in p.splits.items():
        split_of[idx] = name
    return split_of.tolist()


def write_run_files(run_dir: Path, p: Prepared) -> None:
    """What a run holds before training: config.yaml, run.json, split.csv, data.json, skipped.csv."""
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
        rows = list(csv.DictReader(f))
    if p.data.hashes and rows and "sha256" in rows[0]:  # file sources: each file's content too
        for row, sample_id, digest in zip(rows, p.data.ids, p.data.hashes, strict=False):
            if row["id"] == sample_id and row["sha256"] and digest and row["sha256"] != digest:
                raise BiomxError(f"{sample_id}: its content changed since this run was made "
                                 "(sha256 differs from split.csv); start a new run")  # fmt: skip
    saved = [(row["id"], row["split"]) for row in rows]
    now = list(zip(p.data.ids, _split_names(p), strict=True))
    if saved != now:
        first = next((i for i, (a, b) in enumerate(zip(saved, now, strict=False)) if a != b), min(len(saved), len(now)))
        raise BiomxError(f"{run_dir}: the data or its split changed since this run was made "
                         f"(first difference at sample {first + 1} of split.csv); start a new run")  # fmt: skip


def _warn_if_duplicated(modality: Modality, data: Samples, splits: dict[str, np.ndarray]) -> None:
    """Warn (counts only) if identical inputs sit in more than one split, patient column or not."""
    digests = getattr(modality, "sample_digests", None)  # optional for plug-ins written before it
    if digests is not None:
        warn_if_duplicated(digests(data), splits)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"input shape {tuple(x.shape)}"
    nodes = getattr(x, "x", None)  # a PyG graph batch
    if isinstance(nodes, torch.Tensor):
        return f"{type(x).__name__} with node features {tuple(nodes.shape)}"
    return f"input {type(x).__name__}"


def check_model_runs(p: Prepared) -> None:
    """Build the model and run it on one real training sample (CPU, eval mode, no gradients),
    so a bad model.args (a negative width, a depth that pools a small image to nothing) is one
    line before any run file is written.

    Raises:
        ConfigError: the model cannot be built, cannot run on this data's input, or its output
            does not have the task's out_dim columns.
    """
    data = p.datasets["train"]
    if not len(data):
        return
    solvers_only = True  # no model of the run takes gradient steps (a stack may mix both kinds)
    for name, args in selection.member_specs(p.info):
        model = _check_model_runs(name, args, data)
        if p.cfg.train.strategy == "fsdp":  # DP, solvers, fairness: refused before run.json too
            fsdp.check_settings(p.cfg.train, model)
        solvers_only = solvers_only and isinstance(model, FittedModel)
    if p.cfg.train.ema is not None and solvers_only:
        raise ConfigError(f"train.ema: model {name!r} is fitted by a solver in one call, with no steps to "
                          "average; remove train.ema")  # fmt: skip


def _check_model_runs(name: str, args: dict[str, Any], data: Dataset) -> nn.Module:
    getitems = getattr(data, "__getitems__", None)
    x, shape = None, "no input"
    try:
        x, _ = collate_batch(getitems([0]) if getitems is not None else [data[0]])
        shape = _describe(x)
        model = build_model(name, **args).eval()
        with torch.no_grad():
            out = model(x)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  any failure of a user's model arguments: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        first = first if len(first) <= 150 else first[:147] + "..."
        raise ConfigError(f"model.args: {name} cannot run on this data ({shape}): {first}") from None
    out_dim = args.get("out_dim")
    if isinstance(out, torch.Tensor) and isinstance(out_dim, int) and out.ndim >= 1:
        got = out.shape[1] if out.ndim > 1 else 1
        if got != out_dim:
            raise ConfigError(f"model.args: {name} gives {got} outputs per sample on this data ({shape}); "
                              f"the task needs {out_dim}")  # fmt: skip
    return model


def _check_same_model(run_dir: Path, p: Prepared) -> None:
    """A resumed run must build the model its checkpoints were saved with."""
    saved = read_json(run_dir / "run.json").get("model")
    if not isinstance(saved, dict) or "args" not in saved:
        return  # an old run without a model record: loading the weights is the check
    now = json.loads(json.dumps(p.info["model"], default=float))
    if now.get("name") != saved.get("name"):
        raise BiomxError(f"{run_dir}: the checkpoint does not fit model.name {now.get('name')!r} "
                         f"(saved with {saved.get('name')!r}); resume without changing the model")  # fmt: skip
    keys = [k for k in {**saved["args"], **now["args"]} if saved["args"].get(k) != now["args"].get(k)]
    if keys:
        new = ", ".join(f"{k}: {now['args'].get(k)}" for k in keys)
        old = ", ".join(f"{k}: {saved['args'].get(k)}" for k in keys)
        raise BiomxError(f"{run_dir}: the checkpoint does not fit model.args {{{new}}} (saved with {{{old}}}); "
                         "resume without changing the model")  # fmt: skip
    p.info["model"] = saved  # as trained: with the conversion it recorded (a DP run's BatchNorm -> GroupNorm)


def _trainer(p: Prepared, run_dir: Path | None, member: int = 0, callbacks: list[Callback] | None = None) -> Trainer:
    # Ensemble members differ only in their seed: initial weights, batch order, dropout.
    seed_everything(p.cfg.train.seed + member)  # identical initial weights on every rank and every resume
    model = build_recorded(p.info["model"])
    start_transfer(model, p.cfg, run_dir)  # model.init_from, train.freeze (biomx.engine.transfer)
    train = p.datasets["train"]
    if p.cfg.model.ensemble > 1 and isinstance(model, FittedModel) and len(train):
        # A solver fits the same model from the same rows whatever the seed: each member of an
        # ensemble fits a bootstrap sample of the training split instead (bagging), so the
        # members' spread is an uncertainty.
        rows = np.random.default_rng(p.cfg.train.seed + member).integers(0, len(train), len(train))
        train = Subset(train, np.sort(rows).tolist())
    return _make_trainer(p, model, train, run_dir, member, callbacks)


def _make_trainer(p: Prepared, model: torch.nn.Module, train_data: Dataset, run_dir: Path | None, member: int = 0,
                  callbacks: list[Callback] | None = None) -> Trainer:  # fmt: skip
    cfg, task = p.cfg, p.task
    settings = cfg.train.model_copy(update={"seed": cfg.train.seed + member})

    def metrics_fn(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return task.quick_metrics(task.predictions(outputs).numpy(), targets.numpy())

    extra = fair_training(p, model, train_data)  # train.fairness: reweighing sampler, adversary (None without)
    return Trainer(
        model, task.loss, train_data,
        val_data=p.datasets["val"] if len(p.datasets["val"]) else None,
        settings=settings, run_dir=run_dir, metrics_fn=metrics_fn, collate_fn=collate_batch,
        model_config=p.info, tensorboard=cfg.output.tensorboard, callbacks=[*(callbacks or []), *([extra] if extra else [])],
        task=task, extra=extra,
    )  # fmt: skip


def train(cfg: ExperimentConfig, resume: str | Path | None = None, *, model: dict[str, Any] | None = None,
          callbacks: list[Callback] | None = None) -> Path:
    """Run an experiment end to end: train, then evaluate on the test split and report.

    Args:
        cfg: a validated config (see `load_config`).
        resume: a run directory to continue (its own config.yaml is used).
        model: run.json's model entry to train instead of the config's (a DP run's twin: the
            DP run's converted model).
        callbacks: more Trainer callbacks (`biomx tune`'s pruning), after output.mlflow's.

    Returns:
        The run directory.

    Raises:
        BiomxError: bad data or config; `TrainingInterrupted` after Ctrl-C/SIGTERM.
    """
    dist.init_from_env(select_device(cfg.train.device))
    p = prepare(cfg)
    unconverted = p.info["model"]
    # A DP run: its BatchNorm converted (train.privacy.batchnorm), or one line if DP-SGD cannot train it.
    p.info["model"] = model or check_private_run(cfg, p.info["model"], dist.world_size(), p.datasets["train"])
    if resume is not None:
        _check_same_model(Path(resume), p)
    check_model_runs(p)  # before any run file is written: a bad model.args leaves nothing behind
    if resume is None:  # so does a bad model.init_from / train.freeze / train.lr_multipliers
        check_init_from(cfg, lambda: build_recorded(p.info["model"]))
    check_tracking(cfg)  # so does output.mlflow without MLflow installed
    if resume is not None:
        run_dir = Path(resume)
        _check_same_split(run_dir, p)
    else:
        run_dir = Path(cfg.output.dir) / cfg.output.name if cfg.output.name else new_run_dir(cfg.output.dir, cfg.name)
        taken = (run_dir / "run.json").exists()  # rank 0's answer for all: it writes run.json next
        if dist.is_distributed():  # every rank must write into the same directory
            shared = [str(run_dir), taken]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_dir, taken = Path(shared[0]), shared[1]
        if taken:
            raise BiomxError(f"{run_dir}: already holds a run; use --resume {run_dir} or another output.name")
        if dist.is_main():
            write_run_files(run_dir, p)
            console.print(f"run: {run_dir}  ({', '.join(f'{k} {len(v)}' for k, v in p.splits.items())})")
            write_run_audit(run_dir, p)  # RUN/data_audit.json; prints the verdicts that are not ok
        dist.check_shared(run_dir / "run.json", "output.dir")  # several machines: one shared run folder
    members = member_dirs(run_dir, cfg.model.ensemble)
    callbacks = [*tracking_callbacks(cfg, run_dir), *(callbacks or [])]  # one MLflow run across all members
    for k, member_dir in enumerate(members):
        if len(members) > 1 and dist.is_main():
            console.print(f"ensemble member {k + 1}/{len(members)} (seed {cfg.train.seed + k})")
        # On resume, finished members return at once and the interrupted one continues.
        resuming = resume is not None and (member_dir / "checkpoints" / "last.safetensors").is_file()
        if p.info["model"]["name"] == selection.STACK:
            try:
                trainer = _auto_member(p, member_dir, k, callbacks, resuming)
            except TrainingInterrupted as err:  # a family's own trainer has no run folder to name
                raise TrainingInterrupted(f"interrupted during model selection; continue with: biomx train --resume "
                                          f"{run_dir} (the selection starts again)", err.exit_code) from None  # fmt: skip
            continue
        trainer = _trainer(p, member_dir, member=k, callbacks=callbacks)
        try:
            trainer.fit(resume=resuming)
        except RuntimeError as err:
            if not resuming or "state_dict" not in str(err):
                raise
            raise BiomxError(f"{member_dir}: the checkpoint does not fit model.args {cfg.model.args} "
                             "(it was saved with another model); resume without changing the model") from None
    _train_twin(cfg, p.info["model"], unconverted, run_dir)
    evaluation = _finish(p, trainer, run_dir)
    for callback in callbacks:
        callback.on_run_end(run_dir, evaluation)
    return run_dir


def _train_twin(cfg: ExperimentConfig, model: dict[str, Any], unconverted: dict[str, Any], run_dir: Path) -> None:
    """A DP run's non-private twin in RUN/without_privacy/ (train.privacy.baseline, see
    biomx.privacy.baseline): trained once, resumed if it was interrupted, skipped if it finished."""
    twin = twin_config(cfg, model, unconverted, run_dir)
    resume = twin_resume(run_dir / twin.output.name) if twin is not None and dist.is_main() else False
    if resume is False:
        return
    twin_dir = run_dir / twin.output.name
    console.print(f"the same model without DP (train.privacy.baseline): {twin_dir}")
    try:
        train(twin, resume=resume, model=model)
    except TrainingInterrupted as err:  # the DP run's --resume continues the twin
        raise TrainingInterrupted(str(err).replace(str(twin_dir), str(run_dir)), err.exit_code) from None


def _auto_member(p: Prepared, member_dir: Path, member: int, callbacks: list[Callback], resuming: bool) -> Trainer:
    """model.name: auto: select and fit the stack (a finished one is read from its checkpoint)."""
    if resuming:
        trainer = _trainer(p, member_dir, member, callbacks)
        trainer.load(member_dir / "checkpoints" / "last.safetensors")
        return trainer

    def make(model: torch.nn.Module, data: Dataset, run_dir: Path | None) -> Trainer:
        return _make_trainer(p, model, data, run_dir, member, callbacks if run_dir == member_dir else [])

    return selection.fit_auto(p.cfg, p.task, p.info, p.datasets["train"], member_dir, p.cfg.train.seed + member, make)


def _finish(p: Prepared, trainer: Trainer, run_dir: Path) -> dict[str, Any] | None:
    """Evaluate the best checkpoint(s) on the test split and write the report (rank 0 writes)."""
    dist.barrier()
    hooked = getattr(trainer, "grad_sample_module", None)  # DP-SGD's per-sample gradient hooks: for training only
    if hooked is not None:  # (evaluation and explanations take gradients of their own)
        hooked.to_standard_module()
    evaluation, sections, scored = None, [], []
    if len(p.datasets["test"]):
        weights = []
        for member_dir in member_dirs(run_dir, p.cfg.model.ensemble):
            best = member_dir / "checkpoints" / "best.safetensors"
            state, extra = load_checkpoint(best) if best.is_file() else (None, {})
            weights.append(state)
            scored.append(extra)  # epoch and monitored value: the report names what was scored
        run = TestRun(p.cfg, p.modality, p.data, p.splits, p.datasets, p.info["preprocessing"], run_dir, trainer,
                      weights)  # fmt: skip
        evaluation, sections = p.task.evaluate_test(run)
        if evaluation is not None:
            console.print(summary_line(evaluation))
    chosen = selection.report_section(member_dirs(run_dir, p.cfg.model.ensemble)[0])
    sections = [*sections, *audit_sections(run_dir)]  # the data audit written before training
    if dist.is_main():
        private = [*privacy_sections(run_dir), *baseline_sections(run_dir)]  # none unless a DP run
        sections = [*sections, *transfer_sections(run_dir)]  # a fine-tune: layers reused / new
        _write_report(p, trainer, run_dir, evaluation, [*([chosen] if chosen else []), *sections, *private], scored)
    dist.barrier()
    return evaluation


def _scored_checkpoint(p: Prepared, trainer: Trainer, scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Which weights the test split saw: every member's best checkpoint, or the weights in memory."""
    if scored and all(extra.get("epoch") is not None for extra in scored):
        first = scored[0]
        record = {"name": "best", "epoch": first["epoch"], "monitor": first.get("monitor"), "value": first.get("best")}
        if len(scored) > 1:
            record["member_epochs"] = [extra["epoch"] for extra in scored]
        return record
    return {"name": "last", "epoch": trainer.state.get("epoch") or None, "monitor": p.cfg.train.monitor}


def _unused_settings(p: Prepared) -> list[str]:
    """Config paths this run does not read: a spatial modality's paired-scan settings, when the
    source holds no image/mask pairs (as the protocol says where they sit, no name is needed)."""
    scan_settings = getattr(p.modality, "scan_settings", None)
    if scan_settings is None or p.cfg.data.source in getattr(p.modality, "pair_sources", ()):
        return []
    return [scan_settings(p.cfg)[1]]


def _write_report(p: Prepared, trainer: Trainer, run_dir: Path, evaluation: dict[str, Any] | None,
                  sections: list[dict], scored: list[dict[str, Any]]) -> None:  # fmt: skip
    """report.html: the task's sections, the scored checkpoint, units, and the part of the config
    that applies to this run."""
    shown = None
    if evaluation is not None:
        # A copy: test_metrics.json and the returned evaluation stay as the task wrote them.
        shown = {**evaluation, "checkpoint": _scored_checkpoint(p, trainer, scored)}
        units = getattr(p.cfg.task, "units", None)  # a task whose targets have units declares task.units
        if units:
            shown["units"] = units
        sections = [*p.task.report_sections(shown), *sections]
    config, left_out = run_config(p.cfg.model_dump(mode="json"), p.info["modality"], DataConfig.model_fields,
                                  _unused_settings(p))  # fmt: skip
    notes: list[str | dict[str, Any]] = [{"split sizes": {k: len(v) for k, v in p.splits.items()}}]
    notes += [f"skipped: {f} ({r})" for f, r in p.data.skipped[:50]]
    if len(p.data.skipped) > 50:
        notes.append(f"... and {len(p.data.skipped) - 50} more (see skipped.csv)")
    if left_out:
        notes.append(f"config: {', '.join(left_out)} not shown (not read by this run); config.yaml has every key")
    env = environment(trainer.device, trainer.world)
    write_run_report(run_dir, f"biomx run: {run_dir.name}", shown, [*sections, card_section()], config, env, notes)
    write_model_card(run_dir, env)  # RUN/model_card.md and model_card.json, which the report links


def resume_run(run_dir: str | Path, overrides: list[str] | None = None) -> Path:
    """Continue an interrupted run from its last checkpoint (same config, same split)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    started = any((d / "checkpoints" / "last.safetensors").is_file() for d in member_dirs(run_dir, cfg.model.ensemble))
    if not started and cfg.model.name != selection.AUTO:  # an interrupted selection starts again
        raise BiomxError(f"{run_dir}: no checkpoints/last.safetensors to resume from")
    return train(cfg, resume=run_dir)


def evaluate_run(run_dir: str | Path) -> dict[str, Any] | None:
    """Re-evaluate a run's best checkpoint on its test split; rewrite metrics and report."""
    run_dir = Path(run_dir)
    read_json(run_dir / "run.json")  # a clear error if this is not a run directory
    cfg = load_config(run_dir / "config.yaml")
    p = prepare(cfg)
    _check_same_split(run_dir, p)
    recorded = read_json(run_dir / "run.json").get("model")
    if isinstance(recorded, dict) and "args" in recorded:  # as trained: a DP run's converted BatchNorm too
        p.info["model"] = recorded
    cfg.train.progress = False
    trainer = _trainer(p, None)
    return _finish(p, trainer, run_dir)
