"""A modality and a task written in this file alone, registered from Python, run end to end.

`toyvec` reads a CSV of numeric feature columns and a label column; `toyclf` is a binary
classifier written from scratch (loss, metrics, evaluation, report sections). Neither is known
to biomx: both go through `register_modality` / `register_task` and the protocols of
`biomx.protocols`, and the real `prepare`, `train`, `evaluate_run` and `predict_files` run them
on real data (scikit-learn's Wisconsin breast cancer table: 569 tumours, 30 features).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from biomx import batched, protocols
from biomx.config import DataConfig, Section, TaskConfig, dump_config, load_config
from biomx.data.samples import Samples, sha256_file
from biomx.errors import ConfigError, DataError
from biomx.experiment import evaluate_run, prepare, train
from biomx.modalities import MODALITIES, get_modality, register_modality
from biomx.models import registry as model_registry
from biomx.predict import predict_files
from biomx.protocols import Modality, PredictRequest, Task, TaskType
from biomx.tasks import TASKS, get_task, register_task, task_from_info

pytestmark = pytest.mark.usefixtures("one_thread")

MODALITY_SECTION = "toyvec: test inputs"  # the modality's report section (explain)
TASK_SECTION = "toyclf: confusion counts"  # the task's report section (report_sections)

# ---------------------------------------------------------------- the modality: toyvec


class ToyVecSettings(Section):
    """data.toyvec: the id column (the label is data.label_column; every other column is a feature)."""

    id_column: str = "id"
    standardize: bool = True  # with the training split's mean and std


class ToyVecData(DataConfig):
    """`data:` for toyvec: the shared keys, its section `data.toyvec`, its sources."""

    modality: Literal["toyvec"] = "toyvec"
    toyvec: ToyVecSettings = ToyVecSettings()

    sources: ClassVar[tuple[str, ...]] = ("csv",)


@dataclass
class ToyVecInputs:
    """The toy modality's own record of its samples (a `Samples.inputs`)."""

    matrix: torch.Tensor  # (N, F) feature values
    features: list[str]  # the column names


class ToyVecDataset(Dataset):
    """Rows of a feature matrix; `__getitems__` returns a built (x, y) batch (data.batching)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], self.y[indices]


def read_table(path: Path, features: list[str] | None, skip: set[str]) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of a CSV, and its feature columns (given, or every column not in `skip`)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows, header = list(reader), list(reader.fieldnames or [])
    features = features if features is not None else [c for c in header if c not in skip]
    missing = [c for c in features if c not in header]
    if missing or not features:
        raise DataError(f"{path}: missing feature columns {missing or '(none found)'}")
    return rows, features


def to_matrix(path: Path, rows: list[dict[str, str]], features: list[str]) -> torch.Tensor:
    try:
        return torch.tensor([[float(row[c]) for c in features] for row in rows], dtype=torch.float32)
    except ValueError as err:
        raise DataError(f"{path}: a feature value is not a number ({err})") from None


class ToyVec:
    """A `Modality`: a CSV of numeric features, one row per sample."""

    name = "toyvec"
    config = ToyVecData
    sources = ToyVecData.sources
    split_methods = ToyVecData.split_methods
    input_help = "CSV files with the run's feature columns (one prediction per row)"
    datasets: dict[str, str] = {}  # nothing to export

    def check_config(self, cfg: Any) -> None:
        if cfg.data.source not in self.sources:
            raise ConfigError(f"data.source: toyvec reads {self.sources}, not {cfg.data.source!r}")

    def load(self, cfg: Any) -> Samples:
        path, label, section = Path(cfg.data.path), cfg.data.label_column, cfg.data.toyvec
        rows, features = read_table(path, None, {label, section.id_column})
        if rows and label not in rows[0]:
            raise DataError(f"{path}: no label column {label!r}")
        return Samples(inputs=ToyVecInputs(to_matrix(path, rows, features), features), labels=[r[label] for r in rows],
                       ids=[r.get(section.id_column) or f"row{i + 2}" for i, r in enumerate(rows)],
                       source_sha256=sha256_file(path), where={i: f"{path} row {i + 2}" for i in range(len(rows))})

    def split(self, cfg: Any, samples: Samples, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        raise ConfigError(f"data.split.method: toyvec has no split method {cfg.data.split.method!r}")

    def sample_digests(self, samples: Samples) -> list[str] | None:
        return None

    def build_datasets(self, samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray],
                       cfg: Any) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:  # fmt: skip
        x = samples.inputs.matrix.float()
        train_x = x[torch.as_tensor(splits["train"])]
        if cfg.data.toyvec.standardize:
            mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        else:
            mean, std = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
        x = (x - mean) / std
        datasets = {name: ToyVecDataset(x[torch.as_tensor(idx)], targets[torch.as_tensor(idx)])
                    for name, idx in splits.items()}  # fmt: skip
        preprocessing = {"modality": self.name, "features": samples.inputs.features, "mean": mean.tolist(),
                         "std": std.tolist(), "id_column": cfg.data.toyvec.id_column}  # fmt: skip
        return datasets, preprocessing, {"in_channels": x.shape[1]}

    def inference_model(self, model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
        return model

    def explain(self, model: nn.Module, task: Any, test: protocols.TestView, n: int, cfg: Any) -> list[dict]:
        rows = [[test.samples.ids[i], f"{float(np.ravel(p)[0]):.3f}", f"{float(np.ravel(t)[0]):g}"]
                for i, p, t in list(zip(test.index, test.predictions, test.targets, strict=True))[:n]]  # fmt: skip
        return [{"title": MODALITY_SECTION, "text": f"The first {len(rows)} test rows, as the task scored them.",
                 "table": {"header": ["id", "prediction", "target"], "rows": rows}}]  # fmt: skip

    def read_inputs(self, preprocessing: dict[str, Any], inputs: list[str | Path],
                    skip_errors: bool = False) -> tuple[Any, list[str], list[tuple[str, str]]]:  # fmt: skip
        blocks, names, failures = [], [], []
        for item in map(Path, inputs):
            try:
                rows, features = read_table(item, preprocessing["features"], set())
                blocks.append(to_matrix(item, rows, features))
            except DataError as err:
                if not skip_errors:
                    raise
                failures.append((str(item), str(err)))
                continue
            names += [r.get(preprocessing["id_column"]) or f"{item}:{k + 2}" for k, r in enumerate(rows)]
        x = torch.cat(blocks) if blocks else torch.zeros(0, len(preprocessing["features"]))
        x = (x - torch.tensor(preprocessing["mean"])) / torch.tensor(preprocessing["std"])
        return x, names, failures

    def add_commands(self, subparsers: Any) -> None:
        return None

    def export_dataset(self, name: str, out_dir: Any, *, format: str | None, limit: int | None,
                       overwrite: bool = False) -> str:
        raise ConfigError(f"datasets --name: toyvec has no dataset {name!r}")


# ---------------------------------------------------------------- the task: toyclf


class ToyClfConfig(TaskConfig):
    """task: (kind toyclf): a binary classifier with one logit for `positive`."""

    kind: Literal["toyclf"] = "toyclf"
    positive: str | None = None  # the class the model scores; default: the second in sorted order
    pos_weight: Annotated[float, Field(gt=0.0)] = 1.0  # weight of positive samples in the loss


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(((p >= 0.5) == (y >= 0.5)).mean()) if len(y) else float("nan")


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(((p - y) ** 2).mean()) if len(y) else float("nan")


class ToyClfTask:
    """A built `Task`: the probability of `classes[1]` from one logit."""

    kind = "toyclf"
    out_dim = 1
    output_prefix = "prob"

    def __init__(self, classes: list[str], pos_weight: float = 1.0) -> None:
        self.classes, self.pos_weight = list(classes), float(pos_weight)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = torch.tensor(self.pos_weight, device=outputs.device)
        return F.binary_cross_entropy_with_logits(outputs.squeeze(-1).float(), targets.float(), pos_weight=weight)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs.squeeze(-1).float())

    def quick_metrics(self, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        return {"toy_accuracy": accuracy(predictions, targets)}

    def info(self) -> dict[str, Any]:
        return {"name": "toyclf", "classes": self.classes, "pos_weight": self.pos_weight}

    def evaluate(self, predictions: np.ndarray, targets: np.ndarray, n_bootstrap: int, ci: float,
                 seed: int) -> dict[str, Any]:  # fmt: skip
        """Accuracy and Brier score with percentile bootstrap CIs, and the confusion counts."""
        rng = np.random.default_rng(seed)
        draws = [rng.integers(0, len(targets), len(targets)) for _ in range(n_bootstrap)]
        metrics = {}
        for name, fn in (("toy_accuracy", accuracy), ("toy_brier", brier)):
            values = [fn(predictions[d], targets[d]) for d in draws]
            low, high = np.quantile(values, [(1 - ci) / 2, (1 + ci) / 2]) if values else (math.nan, math.nan)
            metrics[name] = {"value": fn(predictions, targets), "ci_low": float(low), "ci_high": float(high)}
        pred, true = (predictions >= 0.5).astype(int), (targets >= 0.5).astype(int)
        confusion = [[int(((true == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]
        return {"kind": self.kind, "n": int(len(targets)), "ci": ci, "n_bootstrap": n_bootstrap,
                "classes": self.classes, "headline": ["toy_accuracy", "toy_brier"], "metrics": metrics,
                "confusion": confusion}  # fmt: skip

    def output_names(self) -> list[str]:
        return [self.classes[1]]

    def truth_column(self, targets: np.ndarray) -> list[str]:
        return [self.classes[int(t)] for t in targets]

    def prediction_columns(self, predictions: np.ndarray) -> dict[str, np.ndarray]:
        predicted = np.array([self.classes[int(p >= 0.5)] for p in predictions], dtype=object)
        return {f"prob_{self.classes[1]}": predictions.astype(float), "predicted": predicted}

    def uncertainty_errors(self, predictions: np.ndarray, std: np.ndarray,
                           targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str], str]:  # fmt: skip
        error = np.abs(predictions - targets).reshape(-1, 1)
        return error, std.reshape(-1, 1), self.output_names(), "mean |p - y|"

    def evaluate_test(self, run: protocols.TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        return batched.evaluate_test(self, run)

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        (tn, fp), (fn, tp) = evaluation["confusion"]
        negative, positive = evaluation["classes"]
        rows = [[f"true {negative}", tn, fp], [f"true {positive}", fn, tp]]
        return [{"title": TASK_SECTION, "table": {"header": ["", f"predicted {negative}", f"predicted {positive}"],
                                                   "rows": rows}}]  # fmt: skip

    def predict(self, request: PredictRequest) -> dict[str, list]:
        return batched.predict(self, request)


def two_classes(cfg: Any, samples: Samples) -> list[str]:
    """[negative, positive] from the labels and task.positive."""
    names = sorted(set(samples.labels))
    if len(names) != 2:
        raise DataError(f"{cfg.data.path}: toyclf needs exactly 2 classes, found {names}")
    positive = cfg.task.positive or names[1]
    if positive not in names:
        raise ConfigError(f"task.positive: {positive!r} is not one of the classes {names}")
    return [n for n in names if n != positive] + [positive]


class ToyClf:
    """A `TaskType`: configured by ToyClfConfig, built into a ToyClfTask."""

    name = "toyclf"
    config = ToyClfConfig
    quick_metric_names = ("toy_accuracy",)

    def check_config(self, cfg: Any, modality: Modality) -> None:
        if cfg.eval.mc_dropout and cfg.model.ensemble > 1:
            raise ConfigError("eval.mc_dropout: toyclf takes an ensemble or MC dropout, not both")

    def load(self, cfg: Any, modality: Modality) -> Samples:
        return modality.load(cfg)

    def targets(self, cfg: Any, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
        positive = two_classes(cfg, samples)[1]
        y = torch.tensor([float(label == positive) for label in samples.labels])
        return y, y.numpy().astype(int)  # stratify by class

    def build(self, cfg: Any, samples: Samples, targets: torch.Tensor, train_index: np.ndarray) -> Task:
        return ToyClfTask(two_classes(cfg, samples), cfg.task.pos_weight)

    def build_datasets(self, cfg: Any, modality: Modality, samples: Samples, targets: torch.Tensor,
                       splits: dict[str, np.ndarray]) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:
        return modality.build_datasets(samples, targets, splits, cfg)

    def from_info(self, info: dict[str, Any]) -> Task:
        return ToyClfTask(info["classes"], info["pos_weight"])


def toy_mlp(in_channels: int = 30, out_dim: int = 1, hidden: int = 16) -> nn.Module:
    """A two-layer MLP on a flat feature vector (N, in_channels)."""
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


TOYVEC, TOYCLF = ToyVec(), ToyClf()


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def toy_plugins():
    """toyvec, toyclf and the toy_mlp model registered for one test, removed afterwards."""
    register_modality("toyvec", TOYVEC)
    register_task("toyclf", TOYCLF)
    model_registry.register("toy_mlp", toy_mlp, description="two-layer MLP on a feature vector (test plug-in)",
                            modalities=("toyvec",), tasks=("toyclf",))  # fmt: skip
    yield
    MODALITIES.unregister("toyvec")
    TASKS.unregister("toyclf")
    model_registry.unregister("toy_mlp")


@pytest.fixture(scope="module")
def breast_cancer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Wisconsin breast cancer table (real): 500 labelled rows to train on, 69 new ones."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    root = tmp_path_factory.mktemp("breast_cancer")
    ids = [f"tumour_{i:03d}" for i in range(len(bunch.target))]
    labels = [str(bunch.target_names[t]) for t in bunch.target]  # malignant / benign
    features = [str(name) for name in bunch.feature_names]

    def write(path: Path, rows: range, with_label: bool) -> Path:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", *features, *(["diagnosis"] if with_label else [])])
            for i in rows:
                writer.writerow([ids[i], *(f"{v:.6g}" for v in bunch.data[i]), *([labels[i]] if with_label else [])])
        return path

    return {"train": write(root / "tumours.csv", range(500), True),
            "new": write(root / "new_tumours.csv", range(500, 569), False),
            "new_ids": ids[500:], "new_labels": labels[500:]}  # fmt: skip


def toy_config(tmp_path: Path, data_path: Path, **changes: Any) -> dict[str, Any]:
    raw = {
        "name": "toy",
        "data": {"source": "csv", "path": str(data_path), "modality": "toyvec",
                 "split": {"method": "stratified", "val": 0.15, "test": 0.2, "seed": 0},
                 "label_column": "diagnosis", "toyvec": {"id_column": "id", "standardize": True}},
        "model": {"name": "toy_mlp", "args": {"hidden": 16}},
        "task": {"kind": "toyclf", "positive": "malignant", "pos_weight": 1.0},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "progress": False,
                  "monitor": "val_toy_accuracy", "optimizer": {"lr": 0.01}, "schedule": {"name": "constant"}},
        "eval": {"bootstrap": 50, "explain": 5},
        "output": {"dir": str(tmp_path / "runs"), "name": "toy-run", "tensorboard": False},
    }  # fmt: skip
    for key, value in changes.items():
        section, _, name = key.partition(".")
        raw[section][name] = value
    return raw


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------- tests


def test_toy_plugins_satisfy_the_protocols() -> None:
    assert isinstance(TOYVEC, Modality)
    assert isinstance(TOYCLF, TaskType)
    assert isinstance(ToyClfTask(["benign", "malignant"]), Task)


def test_registries_serve_the_plugins(toy_plugins: None) -> None:
    assert get_modality("toyvec") is TOYVEC
    assert get_task("toyclf") is TOYCLF
    task = ToyClfTask(["benign", "malignant"], pos_weight=2.0)
    again = task_from_info(task.info())
    assert (again.classes, again.pos_weight) == (["benign", "malignant"], 2.0)
    with pytest.raises(ConfigError, match="toyvec"):  # the closest registered name
        get_modality("toyvex")


def test_config_takes_the_plugins_sections(toy_plugins: None, breast_cancer: dict, tmp_path: Path) -> None:
    """`data:` is the registered modality's `config`, `task:` the task's; both forbid typos."""
    raw = toy_config(tmp_path, breast_cancer["train"])
    cfg = load_config(write_yaml(tmp_path / "toy.yaml", raw))
    assert isinstance(cfg.data, ToyVecData) and cfg.data.label_column == "diagnosis"
    assert cfg.data.toyvec == ToyVecSettings(id_column="id", standardize=True)
    assert isinstance(cfg.task, ToyClfConfig) and (cfg.task.positive, cfg.task.pos_weight) == ("malignant", 1.0)
    assert load_config(write_yaml(tmp_path / "again.yaml", yaml.safe_load(dump_config(cfg)))) == cfg
    typo = toy_config(tmp_path, breast_cancer["train"])
    typo["task"]["pos_wieght"] = typo["task"].pop("pos_weight")
    with pytest.raises(ConfigError, match=r"task\.pos_wieght.*pos_weight"):
        load_config(write_yaml(tmp_path / "typo.yaml", typo))
    unknown = toy_config(tmp_path, breast_cancer["train"])
    unknown["data"]["modality"] = "toyvex"
    with pytest.raises(ConfigError, match=r"data\.modality.*toyvec"):
        load_config(write_yaml(tmp_path / "unknown.yaml", unknown))
    wrong_source = toy_config(tmp_path, breast_cancer["train"])
    wrong_source["data"]["source"] = "npz"
    with pytest.raises(ConfigError, match=r"data.*'npz'.*csv"):  # ToyVecData.sources
        load_config(write_yaml(tmp_path / "source.yaml", wrong_source))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_toy_plugins_run_the_real_flow(toy_plugins: None, breast_cancer: dict, tmp_path: Path) -> None:
    """prepare -> train (1 epoch) -> evaluate_run -> predict_files, all through the protocols."""
    cfg = load_config(write_yaml(tmp_path / "toy.yaml", toy_config(tmp_path, breast_cancer["train"])))

    prepared = prepare(cfg)
    assert isinstance(prepared.task, ToyClfTask) and prepared.task.classes == ["benign", "malignant"]
    sizes = {name: len(index) for name, index in prepared.splits.items()}
    assert sum(sizes.values()) == 500 and min(sizes.values()) > 0, sizes
    assert {name: len(data) for name, data in prepared.datasets.items()} == sizes
    assert prepared.info["model"]["args"] == {"hidden": 16, "in_channels": 30, "out_dim": 1}

    run_dir = train(cfg)
    for name in ("run.json", "config.yaml", "split.csv", "metrics.jsonl", "test_metrics.json", "report.html",
                 "predictions_test.csv", "checkpoints/best.safetensors"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "val_toy_accuracy" in history[-1]  # the task's quick metric, every validation epoch
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    assert metrics["kind"] == "toyclf" and metrics["n"] == sizes["test"]
    test_accuracy = metrics["metrics"]["toy_accuracy"]["value"]
    assert 0.8 <= test_accuracy <= 1.0, test_accuracy  # standardised features: easy even after 1 epoch
    rows = read_csv_rows(run_dir / "predictions_test.csv")
    assert len(rows) == sizes["test"]
    assert {"id", "true", "prob_malignant", "predicted"} <= set(rows[0])
    report = (run_dir / "report.html").read_text()
    assert "toy_accuracy" in report and "toy_brier" in report  # the task's metrics
    assert MODALITY_SECTION in report  # the modality's explain section
    assert TASK_SECTION in report  # the task's report_sections

    evaluation = evaluate_run(run_dir)
    assert evaluation is not None
    assert evaluation["metrics"]["toy_accuracy"]["value"] == pytest.approx(test_accuracy)
    assert MODALITY_SECTION in (run_dir / "report.html").read_text()

    output = tmp_path / "new_predictions.csv"
    columns = predict_files(run_dir, [breast_cancer["new"]], output=output)
    assert columns["path"] == breast_cancer["new_ids"]  # one row per input row, in order
    assert len(columns["predicted"]) == len(columns["prob_malignant"]) == 69
    assert columns["_failures"] == []
    assert [row["path"] for row in read_csv_rows(output)] == breast_cancer["new_ids"]
    hits = np.mean([p == t for p, t in zip(columns["predicted"], breast_cancer["new_labels"], strict=True)])
    assert hits >= 0.8, hits  # read_inputs standardises new rows as the training rows were
