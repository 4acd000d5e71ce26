"""output.mlflow: a real run logs its config, every epoch, the test metrics and its files to
MLflow, read back with MlflowClient; an interrupted run resumes into the same MLflow run; without
MLflow installed the config is one line and no run is started."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from biomx.cli import main
from biomx.config import MlflowConfig, TrainConfig
from biomx.engine.mlflow_logger import MLflowLogger, flat_params, require_mlflow
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.errors import BiomxError

pytestmark = pytest.mark.usefixtures("one_thread")
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow is not installed")


@pytest.fixture(autouse=True)
def file_store(monkeypatch):
    # MLflow 3 refuses file stores unless opted in; biomx opts in for the stores it is asked for.
    # setenv first, so that monkeypatch restores the variable's absence after the test.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def _config(root: Path, png_folder: Path, mlflow: str) -> Path:
    cfg = root / "exp.yaml"
    cfg.write_text(
        f"name: t\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 2, batch_size: 32, progress: true, log_every_steps: 1, log_every_s: 1.0e+9}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\n"
        f"output: {{dir: {root / 'runs'}, name: tiny, tensorboard: false, mlflow: {mlflow}}}\n"
    )
    return cfg


@needs_mlflow
def test_a_run_logs_params_epochs_test_metrics_and_files(tmp_path, png_folder, capsys):
    from mlflow import MlflowClient

    assert main(["train", str(_config(tmp_path, png_folder, "{}"))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    # The default store is a file store inside the run; mlflow.json names the MLflow run.
    record = json.loads((run_dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == (run_dir / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert client.get_experiment(run.info.experiment_id).name == "t"  # the config's name

    params = run.data.params
    assert params["model.name"] == "small_cnn" and params["model.args.width"] == "8"
    assert params["train.epochs"] == "2" and params["train.optimizer.lr"] == "0.001"
    assert params["data.image.size"] == "[28, 28]" and params["output.mlflow.enabled"] == "true"

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "val_loss", "val_auroc", "lr"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == [row["epoch"] for row in history] == [1, 2]
        assert [m.value for m in logged] == pytest.approx([row[key] for row in history])

    test = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    metrics = run.data.metrics
    finite = [name for name, m in test.items() if m["value"] is not None and math.isfinite(m["value"])]
    assert "auroc" in finite
    for name in finite:
        assert metrics[f"test_{name}"] == pytest.approx(test[name]["value"])
    assert metrics["test_auroc_ci_low"] == pytest.approx(test["auroc"]["ci_low"])

    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "test_metrics.json", "config.yaml", "run.json", "metrics.jsonl", "checkpoints"} <= files
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.safetensors"]

    # Not a terminal (pytest captures stderr): plain progress lines, one per batch as configured.
    lines = [line for line in capsys.readouterr().err.splitlines() if "samples/s  eta" in line]
    steps = [re.match(r"epoch (\d)/2  step (\d+)/(\d+)  loss ", line).groups() for line in lines]
    per_epoch = int(steps[0][2])
    assert steps == [(str(e), str(s), str(per_epoch)) for e in (1, 2) for s in range(1, per_epoch + 1)]


@needs_mlflow
def test_any_tracking_uri_and_experiment_name(tmp_path, png_folder):
    from mlflow import MlflowClient

    store = (tmp_path / "shared-store").as_uri()
    cfg = _config(tmp_path, png_folder, f"{{tracking_uri: '{store}', experiment: chest}}")
    assert main(["train", str(cfg), "--set", "train.epochs=1", "--set", "train.progress=false"]) == 0
    assert not (tmp_path / "runs" / "tiny" / "mlruns").exists()
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("chest").experiment_id])
    assert run.data.tags["biomx.run_dir"] == str((tmp_path / "runs" / "tiny").resolve())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]


def _toy_trainer(run_dir: Path, logger: MLflowLogger, step_hook=None) -> Trainer:
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    model = torch.nn.Linear(4, 1)
    settings = TrainConfig(epochs=3, batch_size=16, progress=False, deterministic=True, device="cpu")
    return Trainer(model, torch.nn.functional.mse_loss, TensorDataset(x, y), settings=settings, run_dir=run_dir,
                   tensorboard=False, callbacks=[logger], step_hook=step_hook)  # fmt: skip


@needs_mlflow
def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    def logger() -> MLflowLogger:  # a new process each time: only mlflow.json carries the run id
        return MLflowLogger(MlflowConfig(enabled=True), tmp_path, {"train": {"epochs": 3}}, "toy")

    def stop(trainer: Trainer) -> None:
        if trainer.state["step"] == 6:  # mid epoch 2
            trainer.request_stop("SIGTERM")

    with pytest.raises(TrainingInterrupted):
        _toy_trainer(tmp_path, logger(), stop).fit()
    record = json.loads((tmp_path / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    assert client.get_run(record["run_id"]).info.status == "KILLED"

    _toy_trainer(tmp_path, logger()).fit(resume=True)
    assert json.loads((tmp_path / "mlflow.json").read_text()) == record  # the same MLflow run
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.data.params == {"train.epochs": "3"}
    assert [m.step for m in client.get_metric_history(record["run_id"], "train_loss")] == [1, 2, 3]
    assert [a.path for a in client.list_artifacts(record["run_id"], "checkpoints")] == ["checkpoints/best.safetensors"]


@needs_mlflow
def test_a_store_that_goes_away_is_one_warning_and_training_goes_on(tmp_path, capsys):
    logger = MLflowLogger(MlflowConfig(enabled=True), tmp_path, {}, "toy")

    def lose_the_store(trainer: Trainer) -> None:
        if trainer.state["step"] == 2:  # after the run was opened, before any epoch was logged
            shutil.rmtree(tmp_path / "mlruns")

    history = _toy_trainer(tmp_path, logger, lose_the_store).fit()
    assert [row["epoch"] for row in history] == [1, 2, 3]  # all epochs trained and saved
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning: MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow: could not log epoch 1 to file:")


def test_flat_params_are_dotted_keys_with_json_values():
    config = {"train": {"optimizer": {"lr": 0.001, "betas": [0.9, 0.99]}, "early_stopping": None},
              "model": {"name": "small_cnn", "args": {}}, "compile": False, "long": "x" * 900}  # fmt: skip
    params = dict(flat_params(config))
    assert params["train.optimizer.lr"] == "0.001" and params["train.optimizer.betas"] == "[0.9, 0.99]"
    assert params["train.early_stopping"] == "null" and params["model.name"] == "small_cnn"
    assert params["model.args"] == "{}" and params["compile"] == "false"
    assert len(params["long"]) == 500 and params["long"].endswith("...")


def test_without_mlflow_the_config_is_one_line_and_no_run_starts(tmp_path, png_folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    with pytest.raises(BiomxError, match=r'^output.mlflow needs MLflow: pip install "biomx\[tracking\]" \(or mlflow\)$'):
        require_mlflow()
    assert main(["train", str(_config(tmp_path, png_folder, "true"))]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == 'error: output.mlflow needs MLflow: pip install "biomx[tracking]" (or mlflow)'
    assert not (tmp_path / "runs" / "tiny").exists()  # refused before any run file was written
