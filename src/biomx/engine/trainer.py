"""The Trainer: trains any `torch.nn.Module` on any map-style dataset.

It knows nothing about images or molecules. It takes a model, a loss function `loss_fn(outputs,
targets)`, datasets yielding `(inputs, targets)` batches, and a `TrainConfig`. It owns the loop,
precision, torch.compile, DDP, checkpoints (every epoch, atomic, resumable mid-epoch), best-model
tracking, weight averaging (`biomx.engine.ema`), early stopping and the logs (callbacks hook in:
`biomx.engine.callbacks`). A model fitted by a solver (`protocols.FittedModel`) is fitted in one call.

    trainer = Trainer(model, loss_fn, train_ds, val_data=val_ds, settings=TrainConfig(epochs=3),
                      run_dir="runs/try1", metrics_fn=my_metrics)
    history = trainer.fit()
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from biomx.config import TrainConfig
from biomx.engine import distributed as dist
from biomx.engine import fsdp
from biomx.engine.callbacks import Callback, MetricsFile, TensorBoardLogger
from biomx.engine.checkpoint import load_checkpoint, save_checkpoint
from biomx.engine.dropout import enable_dropout
from biomx.engine.ema import WeightAverage, averaged
from biomx.engine.logging import EpochProgress, console, format_epoch
from biomx.engine.optim import build_optimizer, build_scheduler
from biomx.engine.runtime import select_device, set_deterministic
from biomx.engine.samplers import ResumableSampler, ShardSampler
from biomx.engine.signals import stop_signals
from biomx.errors import BiomxError
from biomx.privacy.dp import make_private
from biomx.protocols import FittedModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricsFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


class TrainingInterrupted(BiomxError):
    """Training stopped on request (Ctrl-C / SIGTERM); the checkpoint was saved."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric (e.g. val_rmse, val_loss) is better."""
    return any(word in metric for word in ("loss", "error", "rmse", "mae", "ece", "brier"))


def _unwrap(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


class Trainer:
    """Train a model; see the module docstring.

    Args:
        model: any `nn.Module` mapping an input batch to outputs.
        loss_fn: `loss_fn(outputs, targets) -> scalar tensor`.
        train_data: map-style dataset of `(input, target)`; may define `__getitems__`
            (batched fetch) and `set_epoch(epoch)` (per-epoch augmentation seeds).
        val_data: optional validation dataset, evaluated after every epoch.
        settings: a `TrainConfig` (the `train:` section of an experiment).
        run_dir: where checkpoints and logs go; None = no files written.
        metrics_fn: `metrics_fn(outputs, targets) -> {name: value}` on validation outputs.
        collate_fn: passed to the DataLoader.
        model_config: JSON-able description saved in checkpoints (to rebuild the model).
        tensorboard: also write TensorBoard event files.
        step_hook: called as `step_hook(trainer)` after every optimizer step.
        callbacks: `Callback`s (see `biomx.engine.callbacks`), run on rank 0 after the built-in
            ones (metrics.jsonl and TensorBoard, when there is a run_dir).
        task: handed to a model fitted by a solver (`protocols.FittedModel`), which fits the whole
            training split in one call (one "epoch") instead of running gradient steps.
        extra: training beyond the task's loss (`biomx.fairness.training.FairTraining`):
            `prepare(trainer)` adds its modules to the optimizer and returns the training sampler;
            `loss(trainer, batch)` is added to each training batch's loss (not to train_loss).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: Dataset,
        *,
        val_data: Dataset | None = None,
        settings: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        metrics_fn: MetricsFn | None = None,
        collate_fn: Callable | None = None,
        model_config: dict[str, Any] | None = None,
        tensorboard: bool = True,
        step_hook: Callable[[Trainer], None] | None = None,
        callbacks: Sequence[Callback] = (),
        task: Any = None,
        extra: Any = None,
    ):
        self.settings = settings or TrainConfig()
        s = self.settings
        self.device = select_device(s.device)
        dist.init_from_env(self.device)
        set_deterministic(s.deterministic)
        self.rank, self.world = dist.rank(), dist.world_size()
        if s.batch_size % self.world:
            raise BiomxError(
                f"train.batch_size: {s.batch_size} is not divisible by the {self.world} processes"
            )
        self.local_batch = s.batch_size // self.world
        self.loss_fn, self.metrics_fn, self.collate_fn = loss_fn, metrics_fn, collate_fn
        self.train_data, self.val_data = train_data, val_data
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model_config = model_config or {}
        self.step_hook = step_hook
        files = [MetricsFile(), *([TensorBoardLogger()] if tensorboard else [])] if self.run_dir is not None else []
        self.callbacks: list[Callback] = [*files, *callbacks]
        self._stop_reason: str | None = None
        self.last_loss = float("nan")  # this rank's loss of the latest batch
        self.task = task
        self.solver = isinstance(model, FittedModel)  # no parameters: no optimizer steps, no DDP

        self.model = model.to(self.device)
        if s.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.sharding = fsdp.setup(self, extra) if s.strategy == "fsdp" else None  # shards self.model, before its optimizer
        self.optimizer = build_optimizer(self.model, s.optimizer, s.lr_multipliers)
        self.extra = extra  # prepare(): its modules join the optimizer (before the scheduler); its sampler
        self.sampler = extra.prepare(self) if extra is not None else ResumableSampler(
            train_data, num_replicas=self.world, rank=self.rank, shuffle=True, seed=s.seed
        )
        self.train_loader = self._loader(train_data, self.sampler, drop_last=True)
        self.batches_per_epoch = len(self.sampler) // self.local_batch
        if self.batches_per_epoch == 0 and not self.solver:
            raise BiomxError(
                f"train: the training split has {len(train_data)} samples, fewer than "
                f"train.batch_size={s.batch_size}; lower the batch size"
            )
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / s.accumulate)
        self.scheduler = build_scheduler(
            self.optimizer, s.schedule, s.epochs * self.steps_per_epoch, self.steps_per_epoch
        )
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)
        self.scaler = fsdp.grad_scaler(self.sharding, self.device.type, enabled=s.precision == "fp16")

        self.net = self._network()
        self.privacy = make_private(self) if s.privacy is not None else None  # DP-SGD: biomx.privacy.dp
        self.ema = WeightAverage(_unwrap(self.net), s.ema) if s.ema is not None and not self.solver else None

        self.state: dict[str, Any] = {
            "epoch": 0,  # epochs completed
            "batch_in_epoch": 0,  # batches done in the current epoch (mid-epoch checkpoint)
            "step": 0,  # optimizer steps
            "loss_sum": 0.0,  # this epoch's running training loss (x samples), this rank
            "samples": 0,
            "best": None,
            "best_epoch": None,
            "bad_epochs": 0,
            "stopped_early": False,
        }
        self.history: list[dict[str, Any]] = []

    def _network(self) -> nn.Module:
        """The network as run: optionally compiled, wrapped for DDP (not a solver's model, which
        has no gradients to reduce). Checkpoints use _unwrap()."""
        net = self.model
        if self.world > 1 and not self.solver and self.sharding is None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        if self.settings.compile and not self.solver:
            net = torch.compile(net)
        return net

    # ------------------------------------------------------------------ data

    def _loader(self, data: Dataset, sampler: Sampler, drop_last: bool, batch_size: int | None = None) -> DataLoader:
        workers = self.settings.num_workers
        return DataLoader(
            data,
            batch_size=batch_size or self.local_batch,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=self.collate_fn,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # Not persistent: fresh workers each epoch see the dataset's new set_epoch() seed.
            persistent_workers=False,
            # Its own generator: creating an iterator must not advance the global RNG, or a
            # resumed run would draw different dropout masks than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.settings.seed),
        )

    def _to_device(self, batch: Any) -> tuple[Any, torch.Tensor]:
        # x is a tensor, or any batch object with .to() (a PyG graph batch for molecules).
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        if self.settings.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoints" if self.run_dir is not None else None

    def _rng_state(self) -> dict[str, Any]:
        # Every rank has its own RNG stream (dropout, augmentation); save all of them.
        cpu = dist.gather_cat(torch.get_rng_state().unsqueeze(0))
        state = {"torch": cpu}
        if self.device.type == "cuda":
            state["cuda"] = dist.gather_cat(torch.cuda.get_rng_state(self.device).unsqueeze(0))
        return state

    def save(self, name: str = "last") -> None:
        """Write `checkpoints/<name>.safetensors` with everything needed to resume (FSDP: and the shards)."""
        rng = self._rng_state()  # collective: every rank must call it
        if self.sharding is not None:  # every rank writes its shards of the model and the optimizer
            path = self.sharding.save(self, self._progress(rng))
            return self._emit("on_checkpoint", path) if path is not None else None
        if self.checkpoint_dir is None or not dist.is_main():
            return
        extra = {**self._progress(rng), "optimizer": self.optimizer.state_dict(), **(self.ema.checkpoint() if self.ema else {})}
        save_checkpoint(path := self.checkpoint_dir / f"{name}.safetensors", _unwrap(self.net).state_dict(), extra)
        self._emit("on_checkpoint", path)

    def _progress(self, rng: dict[str, Any]) -> dict[str, Any]:
        """Where training stands (all but the model and the optimizer), as a checkpoint keeps it."""
        return {"trainer": dict(self.state), "history": self.history, "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.world,
                "model_config": self.model_config, "settings": self.settings.model_dump(mode="json")}  # fmt: skip

    def _save_best(self) -> None:
        if self.checkpoint_dir is None:
            return
        weights = self.sharding.full_state(self.model) if self.sharding else _unwrap(self.net).state_dict()  # collective
        if not dist.is_main():
            return
        extra = {
            "model_config": self.model_config,
            "epoch": self.state["epoch"],
            "monitor": self.settings.monitor,
            "best": self.state["best"],
        }
        path = self.checkpoint_dir / "best.safetensors"
        save_checkpoint(path, weights, extra)
        self._emit("on_checkpoint", path)

    def load(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG and loop position from a checkpoint."""
        weights, extra = load_checkpoint(path)
        if "trainer" not in extra:
            raise BiomxError(f"{path}: holds weights only, not a resumable training state")
        fsdp.check_strategy(path, extra, sharded=self.sharding is not None)
        if self.sharding is not None:  # model, optimizer and RNG from the shards, on any number of ranks
            self.sharding.load(self, path, extra)
        else:
            if extra["world_size"] != self.world:
                raise BiomxError(f"{path}: saved with {extra['world_size']} processes; resume with the same number "
                                 f"(got {self.world})")  # fmt: skip
            _unwrap(self.net).load_state_dict(weights)
            if self.ema is not None:
                self.ema.restore(extra, path)
            self.optimizer.load_state_dict(extra["optimizer"])
            # clone: torch 2.13's set_rng_state reads a row of the stacked states from its storage's start
            torch.set_rng_state(extra["rng"]["torch"][self.rank].clone())  # (rank >= 1: a crash)
            if "cuda" in extra["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(extra["rng"]["cuda"][self.rank].clone(), self.device)
        self.scheduler.load_state_dict(extra["scheduler"])
        if extra["scaler"]:
            self.scaler.load_state_dict(extra["scaler"])
        self.state.update(extra["trainer"])
        self.history = list(extra["history"])

    def _emit(self, hook: str, *args: Any) -> None:
        """Call `hook(self, *args)` on every callback, on rank 0 only (they log and write files)."""
        if dist.is_main():
            for callback in self.callbacks:
                getattr(callback, hook)(self, *args)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current optimizer step, saving a resumable checkpoint."""
        self._stop_reason = reason

    def _on_signal(self, signum, frame) -> None:
        if self._stop_reason is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_reason = signal.Signals(signum).name
        if dist.is_main():
            console.print(f"[yellow]{self._stop_reason}: finishing this step and saving a checkpoint[/]")

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train for `settings.epochs` epochs (or continue from the last checkpoint).

        Returns the per-epoch history (also in `run_dir/metrics.jsonl`); raises TrainingInterrupted
        after Ctrl-C/SIGTERM or `request_stop`, once saved.
        """
        s = self.settings
        if resume:
            self.load(self.checkpoint_dir / "last.safetensors")
        else:
            torch.manual_seed(s.seed + self.rank)
        with self._callbacks_around(), stop_signals(self._on_signal):
            if self.solver and self.state["epoch"] == 0:  # fitted in one call; never epochs
                self._fit_solver()
            while not self.solver and self.state["epoch"] < s.epochs and not dist.any_rank(self.state["stopped_early"]):
                self._train_epoch()
        if self.sharding is not None:
            self.sharding.finish(self)  # evaluation runs the whole model on every rank
        if self.ema is not None:  # trained to the end: the averaged weights are the model from here on
            _unwrap(self.net).load_state_dict(self.ema.average)
        return self.history

    @contextlib.contextmanager
    def _callbacks_around(self):
        error: BaseException | None = None
        try:
            self._emit("on_train_start")  # inside: a failing start still lets the others clean up
            yield
        except BaseException as err:
            error = err
            raise
        finally:
            self._emit("on_train_end", error)

    def _train_epoch(self) -> None:
        s, st = self.settings, self.state
        epoch = st["epoch"]
        self.sampler.set_epoch(epoch)
        self.sampler.start = st["batch_in_epoch"] * self.local_batch
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(epoch)
        self.net.train()
        progress = EpochProgress(s.progress and dist.is_main(), epoch + 1, s.epochs, self.batches_per_epoch,
                                 st["batch_in_epoch"], s.log_every_s, s.log_every_steps)  # fmt: skip
        started, samples_now = time.perf_counter(), 0
        with progress:
            for i, batch in enumerate(self.train_loader, start=st["batch_in_epoch"]):
                x, y = self._to_device(batch)
                sync = (i + 1) % s.accumulate == 0 or i + 1 == self.batches_per_epoch
                # Skip DDP's gradient all-reduce on accumulation micro-steps (FSDP reduce-scatters each
                # one: unsharded gradients kept between micro-steps would cost the memory it saves).
                no_sync = self.world > 1 and not sync and self.sharding is None
                with self.net.no_sync() if no_sync else contextlib.nullcontext(), self._autocast():
                    loss = self.loss_fn(self.net(x), y)
                    added = self.extra.loss(self, i) if self.extra is not None else 0.0  # not in train_loss
                self.scaler.scale((loss + added) / s.accumulate).backward()
                self.last_loss = loss.item()
                st["loss_sum"] += self.last_loss * len(y)
                st["samples"] += len(y)
                samples_now += len(y)
                st["batch_in_epoch"] = i + 1
                if not sync:
                    continue
                self._optimizer_step()
                rate = samples_now * self.world / (time.perf_counter() - started)
                progress.update(i + 1, rate, st["loss_sum"] / st["samples"])
                if self.step_hook is not None:
                    self.step_hook(self)
                if s.checkpoint_every and st["step"] % s.checkpoint_every == 0:
                    self.save()
                if dist.any_rank(self._stop_reason is not None):
                    self._stop()
        train_time = time.perf_counter() - started
        self._end_epoch(samples_now * self.world / max(train_time, 1e-9), train_time)

    def _whole(self, data: Dataset) -> tuple[Any, torch.Tensor]:
        """A whole split as one batch, as the DataLoader collates it."""
        loader = self._loader(data, ShardSampler(len(data), 0, 1), drop_last=False, batch_size=max(len(data), 1))
        return self._to_device(next(iter(loader)))

    def _fit_solver(self) -> None:
        """A FittedModel: its solver fits the whole training split in one call (on every rank)."""
        started = time.perf_counter()
        x, y = self._whole(self.train_data)
        val = self._whole(self.val_data) if self.val_data is not None and len(self.val_data) else None
        facts = _unwrap(self.net).fit(x, y, self.task, val=val, seed=self.settings.seed)
        self._record_fitted(facts, time.perf_counter() - started)

    def record_fitted(self, facts: dict[str, Any], seconds: float) -> None:
        """For a model fitted outside `fit` (a stack assembled by model selection): one epoch row
        (training loss, validation metrics) and the checkpoints, between the callbacks' start and end."""
        with self._callbacks_around():
            self._record_fitted(facts, seconds)

    def _record_fitted(self, facts: dict[str, Any], seconds: float) -> None:
        outputs, targets = self.predict(self.train_data)
        self.state.update(loss_sum=float(self.loss_fn(outputs, targets)) * len(targets), samples=len(targets),
                          step=1, solver=facts)  # fmt: skip
        if dist.is_main() and facts:
            console.print("fitted: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
        self._end_epoch(len(targets) / max(seconds, 1e-9), seconds)

    def _optimizer_step(self) -> None:
        s = self.settings
        if s.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), s.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state["step"] += 1
        if self.ema is not None:
            self.ema.update(_unwrap(self.net))

    def _stop(self) -> None:
        reason = self._stop_reason or "stop requested"
        self.save()
        st = self.state
        where = f"epoch {st['epoch'] + 1}, batch {st['batch_in_epoch']}/{self.batches_per_epoch}"
        resume = f"biomx train --resume {self.run_dir}" if self.run_dir else "Trainer.fit(resume=True)"
        code = {"SIGINT": 130, "SIGTERM": 143}.get(reason, 1)
        raise TrainingInterrupted(f"interrupted ({reason}) at {where}; checkpoint saved; continue with: {resume}", code)

    def _end_epoch(self, samples_per_s: float, train_time: float) -> None:
        st = self.state
        train_loss = dist.mean_across_ranks(torch.tensor(st["loss_sum"] / max(st["samples"], 1))).item()
        row: dict[str, Any] = {"epoch": st["epoch"] + 1, "step": st["step"], "train_loss": train_loss}
        with averaged(self.ema, _unwrap(self.net)):  # train.ema: the averaged weights are validated and kept
            if self.val_data is not None:
                outputs, targets = self.predict(self.val_data)
                row["val_loss"] = float(self.loss_fn(outputs, targets))
                if self.metrics_fn is not None:
                    row.update({f"val_{k}": float(v) for k, v in self.metrics_fn(outputs, targets).items()})
            row.update(lr=self.scheduler.get_last_lr()[0], samples_per_s=samples_per_s, time_s=train_time)
            st.update(epoch=st["epoch"] + 1, batch_in_epoch=0, loss_sum=0.0, samples=0)
            self.history.append(row)
            self._track_best(row)
        self.save()
        self._emit("on_epoch_end", row)
        if dist.is_main():
            console.print(format_epoch(row))

    def _track_best(self, row: dict[str, Any]) -> None:
        s, st = self.settings, self.state
        monitor = s.monitor if s.monitor in row else "train_loss"
        value = row[monitor]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        lower = lower_is_better(monitor)
        improved = st["best"] is None or (value < st["best"] if lower else value > st["best"])
        if improved:
            st.update(best=value, best_epoch=row["epoch"], bad_epochs=0)
            self._save_best()
        else:
            st["bad_epochs"] += 1
            if s.early_stopping and st["bad_epochs"] >= s.early_stopping:
                st["stopped_early"] = True
                if dist.is_main():
                    console.print(f"early stopping: {monitor} has not improved for {s.early_stopping} epochs")

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def predict(
        self, data: Dataset, batch_size: int | None = None, mc_dropout: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs and targets for every sample of `data`, in dataset order, on CPU.

        Under torchrun each rank runs a shard; all ranks get the gathered result.
        mc_dropout: keep dropout active (one Monte Carlo dropout pass; batch norm stays in eval).
        """
        shards = fsdp.EvenShardSampler if self.sharding and self.sharding.active else ShardSampler  # same forwards
        sampler = shards(len(data), self.rank, self.world)
        loader = self._loader(data, sampler, drop_last=False, batch_size=batch_size or self.local_batch * 2)
        self.net.eval()
        if mc_dropout:
            enable_dropout(self.net)
        outputs, targets = [], []
        for batch in loader:
            x, y = self._to_device(batch)
            with self._autocast():
                outputs.append(self.net(x).float().cpu())
            targets.append(y.cpu())
        self.net.train()
        out, tgt = torch.cat(outputs)[: len(sampler.indices)], torch.cat(targets)[: len(sampler.indices)]
        if self.world > 1:
            order = dist.gather_cat(torch.tensor(sampler.indices))
            out, tgt = dist.gather_cat(out), dist.gather_cat(tgt)
            inverse = torch.argsort(order)
            out, tgt = out[inverse], tgt[inverse]
        return out, tgt
