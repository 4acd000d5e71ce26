"""The Trainer on real chest X-rays: resume is exact, checkpoints are safe, settings work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from biomx.config import TrainConfig
from biomx.data.batching import collate_batch
from biomx.engine.checkpoint import load_checkpoint
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


def _trainer(xrays, run_dir, seed_model=0, augment=True, **settings):
    seed_everything(seed_model)
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.3)
    train, val = _datasets(xrays, augment)
    defaults = {"epochs": 2, "batch_size": 32, "deterministic": True, "progress": False,
                "schedule": {"warmup_epochs": 0.5}}  # fmt: skip
    cfg = TrainConfig(**{**defaults, **settings})
    metrics = lambda out, y: TASK.quick_metrics(TASK.probabilities(out).numpy(), y.numpy())  # noqa: E731
    return Trainer(model, TASK.loss, train, val_data=val, settings=cfg, run_dir=run_dir,
                   metrics_fn=metrics, collate_fn=collate_batch, tensorboard=False)  # fmt: skip


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
