"""The Trainer on real chest X-rays: resume is exact, checkpoints are safe, settings work,
callbacks hear every epoch, checkpoint and end, and a log file gets plain progress lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from biomx.config import TrainConfig
from biomx.data.batching import collate_batch
from biomx.engine.callbacks import Callback
from biomx.engine.checkpoint import load_checkpoint
from biomx.engine.logging import format_duration
from biomx.engine.runtime import seed_everything
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.modalities.image.augment import Augment
from biomx.models.registry import build_model
from biomx.tasks.classification.task import build_task

TASK = build_task("binary", ["normal", "pneumonia"])


def _datasets(xrays, augment=True):
    images, labels = xrays
    aug = Augment(hflip=0.5, rotate=10, noise=0.02) if augment else None
    train = ImageTensorDataset(images[:256], labels[:256], augment=aug, seed=0)
    val = ImageTensorDataset(images[256:384], labels[256:384])
    return train, val


def _trainer(xrays, run_dir, seed_model=0, augment=True, callbacks=(), tensorboard=False, **settings):
    seed_everything(seed_model)
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.3)
    train, val = _datasets(xrays, augment)
    defaults = {"epochs": 2, "batch_size": 32, "deterministic": True, "progress": False,
                "schedule": {"warmup_epochs": 0.5}}  # fmt: skip
    cfg = TrainConfig(**{**defaults, **settings})
    metrics = lambda out, y: TASK.quick_metrics(TASK.probabilities(out).numpy(), y.numpy())  # noqa: E731
    return Trainer(model, TASK.loss, train, val_data=val, settings=cfg, run_dir=run_dir,
                   metrics_fn=metrics, collate_fn=collate_batch, tensorboard=tensorboard, callbacks=callbacks)  # fmt: skip


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_training_learns_and_logs(xrays, tmp_path):
    trainer = _trainer(xrays, tmp_path, epochs=3, monitor="val_auroc")
    history = trainer.fit()
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_auroc"] > 0.8  # real signal, learnt from 256 X-rays
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    _, best = load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    assert best["best"] == max(row["val_auroc"] for row in history)


@pytest.mark.parametrize("stop_at_step", [5, 8, 11])  # mid-epoch, epoch boundary, mid second epoch
def test_resume_after_interrupt_gives_identical_weights(xrays, tmp_path, stop_at_step):
    reference = _trainer(xrays, tmp_path / "a")
    reference.fit()

    def interrupt(trainer):
        if trainer.state["step"] == stop_at_step:
            trainer.request_stop("SIGTERM")

    interrupted = _trainer(xrays, tmp_path / "b")
    interrupted.step_hook = interrupt
    with pytest.raises(TrainingInterrupted, match="checkpoint saved") as info:
        interrupted.fit()
    assert info.value.exit_code == 143
    # A new process: fresh model with other weights, state restored only from the checkpoint.
    resumed = _trainer(xrays, tmp_path / "b", seed_model=123)
    history = resumed.fit(resume=True)

    assert resumed.state["step"] == reference.state["step"]
    for key, value in _weights(reference).items():
        assert torch.equal(value, _weights(resumed)[key]), key
    assert [r["train_loss"] for r in history] == pytest.approx([r["train_loss"] for r in reference.history])


def test_checkpoint_is_safetensors_with_full_state(xrays, tmp_path):
    trainer = _trainer(xrays, tmp_path, epochs=1)
    trainer.fit()
    path = tmp_path / "checkpoints" / "last.safetensors"
    with safe_open(str(path), framework="pt") as f:  # loads without any unpickling
        keys = list(f.keys())
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("state.optimizer") for k in keys)
    _, extra = load_checkpoint(path)
    assert extra["trainer"]["epoch"] == 1 and extra["scheduler"]["last_epoch"] == trainer.state["step"]
    assert not [p for p in path.parent.iterdir() if "tmp" in p.name]  # no temp file left


def test_truncated_checkpoint_is_a_clear_error(xrays, tmp_path):
    trainer = _trainer(xrays, tmp_path, epochs=1)
    trainer.fit()
    path = tmp_path / "checkpoints" / "last.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(Exception, match="not a readable biomx checkpoint"):
        _trainer(xrays, tmp_path).fit(resume=True)


def test_early_stopping_stops(xrays, tmp_path):
    # lr so small nothing improves after epoch 1: patience 1 stops at epoch 2.
    trainer = _trainer(xrays, tmp_path, epochs=6, early_stopping=1, monitor="val_loss",
                       optimizer={"lr": 1e-9}, schedule={"name": "constant"})  # fmt: skip
    history = trainer.fit()
    assert len(history) < 6 and trainer.state["stopped_early"]


def test_accumulation_matches_a_larger_batch(xrays, tmp_path):
    # Without BatchNorm or dropout, 2 x 16 accumulated == one batch of 32.
    def run(**kw):
        seed_everything(0)
        model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.0, norm="none")
        train, _ = _datasets(xrays, augment=False)
        cfg = TrainConfig(epochs=1, progress=False, grad_clip=None, **kw)
        Trainer(model, TASK.loss, train, settings=cfg, collate_fn=collate_batch).fit()
        return model.state_dict()

    big, small = run(batch_size=32), run(batch_size=16, accumulate=2)
    for key in big:
        torch.testing.assert_close(big[key], small[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(xrays, precision):
    trainer = _trainer(xrays, None, epochs=1, precision=precision, deterministic=False)
    history = trainer.fit()
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


def test_batch_larger_than_data_is_a_clear_error(xrays):
    with pytest.raises(Exception, match="fewer than train.batch_size=1024"):
        _trainer(xrays, None, batch_size=1024)


class Recorder(Callback):
    """Every hook call, in order, as a short tuple."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.events.append(("start", len(trainer.history)))

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.events.append(("epoch", record["epoch"], record is trainer.history[-1]))

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        assert path.is_file()  # written before the hook runs
        self.events.append(("checkpoint", path.name))

    def on_train_end(self, trainer: Trainer, error: BaseException | None) -> None:
        self.events.append(("end", type(error).__name__ if error is not None else None))


def test_callbacks_hear_each_epoch_checkpoint_and_the_end(xrays, tmp_path):
    recorder = Recorder()
    _trainer(xrays, tmp_path, callbacks=[recorder], monitor="train_loss").fit()
    events = recorder.events
    assert events[0] == ("start", 0) and events[-1] == ("end", None)
    assert [e for e in events if e[0] == "epoch"] == [("epoch", 1, True), ("epoch", 2, True)]
    for epoch in (1, 2):  # an epoch is reported after its last.safetensors is on disk
        assert events[events.index(("epoch", epoch, True)) - 1] == ("checkpoint", "last.safetensors")
    assert events.count(("checkpoint", "best.safetensors")) >= 1


def test_callbacks_hear_an_interrupt_and_the_resume(xrays, tmp_path):
    def stop(trainer):
        if trainer.state["step"] == 10:  # mid epoch 2 (8 batches per epoch)
            trainer.request_stop("SIGTERM")

    first = Recorder()
    interrupted = _trainer(xrays, tmp_path, callbacks=[first])
    interrupted.step_hook = stop
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    assert first.events[-2:] == [("checkpoint", "last.safetensors"), ("end", "TrainingInterrupted")]
    assert [e[1] for e in first.events if e[0] == "epoch"] == [1]
    second = Recorder()
    _trainer(xrays, tmp_path, callbacks=[second]).fit(resume=True)
    assert second.events[0] == ("start", 1)  # the resumed history holds epoch 1
    assert [e[1] for e in second.events if e[0] == "epoch"] == [2] and second.events[-1] == ("end", None)


def test_tensorboard_is_a_callback_with_the_same_scalars(xrays, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = _trainer(xrays, tmp_path, tensorboard=True, monitor="val_auroc").fit()
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"train/loss", "val/loss", "val/auroc", "lr", "samples/per_s"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("val/auroc")] == [
        (row["epoch"], pytest.approx(row["val_auroc"])) for row in history]  # fmt: skip


def test_plain_progress_lines_when_stderr_is_not_a_terminal(xrays, capsys):
    # pytest captures stderr (not a terminal, like nohup or SLURM): lines instead of the bar.
    # log_every_s is out of reach so the lines come from the step count alone.
    _trainer(xrays, None, progress=True, log_every_steps=3, log_every_s=1e9).fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
    pattern = r"epoch (\d)/2  step (\d+)/8  loss \S+  \d+ samples/s  eta (\d+s|\d+m\d\ds)"
    assert [re.fullmatch(pattern, line).groups()[:2] for line in lines] == [
        ("1", "3"), ("1", "6"), ("2", "3"), ("2", "6")]  # fmt: skip


def test_no_progress_lines_with_progress_off(xrays, capsys):
    _trainer(xrays, None, epochs=1, progress=False, log_every_steps=1).fit()
    assert " step " not in capsys.readouterr().err


def test_durations_are_short():
    assert [format_duration(s) for s in (0, 42.4, 95, 3599, 7380)] == ["0s", "42s", "1m35s", "59m59s", "2h03m"]
