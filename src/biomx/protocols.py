"""The two plug-in protocols: a `Modality` (one kind of data) and a `TaskType` (what the outputs mean).

The experiment, predict, evaluation, report and CLI code call these and never branch on a
modality's or a task's name. A plug-in is a module (or any object) with these attributes,
registered by name in `biomx.modalities.MODALITIES` / `biomx.tasks.TASKS`, or from Python with
`register_modality` / `register_task`. A config can only select a registered name: nothing
in a config is imported or evaluated.

Adding a modality: a folder `modalities/<name>/` whose `__init__.py` satisfies `Modality`, and
one line in `MODALITIES`. Adding a task: a folder `tasks/<name>/` whose `__init__.py`
satisfies `TaskType`, and one line in `TASKS`. See docs/architecture.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing the protocols costs nothing
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from biomx.config import DataConfig, ExperimentConfig, TaskConfig
    from biomx.data.samples import Samples
    from biomx.data_audit.fingerprints import Fingerprints
    from biomx.engine.trainer import Trainer


@dataclass
class TestView:
    """The test split as a modality's `explain` sees it."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    samples: Samples  # all samples of the run
    index: np.ndarray  # rows of `samples` in the test split
    data: Dataset  # the test dataset (as built by `build_datasets`)
    predictions: np.ndarray  # task space: probabilities or values in original units
    targets: np.ndarray  # as the task encodes them
    splits: dict[str, np.ndarray]  # every split, e.g. for a table of what train and test share
    run_dir: Path | None = None  # the run's folder, for files an explanation keeps (e.g. a baseline model)


@dataclass
class TestRun:
    """Everything a task needs to evaluate the test split of a trained run."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    cfg: ExperimentConfig
    modality: Modality
    samples: Samples
    splits: dict[str, np.ndarray]
    datasets: dict[str, Dataset]
    preprocessing: dict[str, Any]
    run_dir: Path
    trainer: Trainer  # its model, device, autocast and `predict` (sharded under torchrun)
    member_weights: list[dict[str, torch.Tensor] | None]  # best weights of each ensemble member
    # split -> (mean prediction, targets), kept by `batched.mean_predictions` so a split is predicted
    # once however many evaluations read it (the operating point and the subgroup thresholds: "val")
    mean_predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


@dataclass
class PredictRequest:
    """A `biomx predict` call, as a task sees it."""

    models: list[nn.Module]  # every ensemble member, in eval mode, on the CPU
    info: dict[str, Any]  # the run's run.json
    modality: Modality
    inputs: list[str | Path]
    output: Path | None = None  # the CSV the caller writes (tasks may write files beside it)
    skip_errors: bool = False
    batch_size: int = 256
    mc_dropout: int | None = None  # None: as the run was evaluated
    files_dir: Path | None = None  # where per-input files go (e.g. masks); None: the task's default
    failures: list[tuple[str, str]] = field(default_factory=list)
    run_dir: Path | None = None  # the run being called, for files a task keeps beside run.json
    engine: Any = None  # an export engine (`biomx.export.engines`): run it on `read_raw` inputs, not `models`


@runtime_checkable
class Task(Protocol):
    """A built task: what the model's outputs mean for one run."""

    kind: str  # what the evaluation JSON calls it (e.g. binary, multiclass, regression)
    classes: list[str]
    out_dim: int

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor: ...

    def quick_metrics(self, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]: ...

    def info(self) -> dict[str, Any]:
        """The run.json "task" entry; `TaskType.from_info` rebuilds the task from it."""
        ...

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        """Score the test split, write test_metrics.json and predictions_test.csv; return the
        evaluation (None on non-zero ranks) and report sections. Called on every rank."""
        ...

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        """Report sections drawn from an evaluation (curves, confusion, scatter, ...)."""
        ...

    def predict(self, request: PredictRequest) -> dict[str, list]:
        """Prediction columns for new inputs ("path" first); failures go to request.failures."""
        ...


@runtime_checkable
class TaskType(Protocol):
    """A registry entry for a task: its config section and how it is built."""

    name: str
    config: type[TaskConfig]  # the `task:` section when task.kind is `name` (a TaskConfig subclass)
    quick_metric_names: tuple[str, ...]  # validation metrics reported each epoch

    def check_config(self, cfg: ExperimentConfig, modality: Modality) -> None: ...

    def load(self, cfg: ExperimentConfig, modality: Modality) -> Samples: ...

    def targets(self, cfg: ExperimentConfig, samples: Samples) -> tuple[torch.Tensor, np.ndarray | None]:
        """(targets, labels to stratify splits by, or None)."""
        ...

    def build(self, cfg: ExperimentConfig, samples: Samples, targets: torch.Tensor,
              train_index: np.ndarray) -> Task: ...

    def build_datasets(self, cfg: ExperimentConfig, modality: Modality, samples: Samples, targets: torch.Tensor,
                       splits: dict[str, np.ndarray]) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:
        """(datasets per split, preprocessing for run.json, model input arguments)."""
        ...

    def from_info(self, info: dict[str, Any]) -> Task: ...


@runtime_checkable
class Modality(Protocol):
    """One kind of data: how it is read, checked, split, batched, explained and read back."""

    name: str
    config: type[DataConfig]  # `data:` when data.modality is `name`: a DataConfig subclass with a
    #   `data.<name>` section of the modality's own settings; it names the sources and split methods
    sources: tuple[str, ...]  # values of data.source it reads
    split_methods: tuple[str, ...]  # its own data.split.method values (e.g. a structure-based split)
    input_help: str  # what `biomx predict` takes, for --help
    datasets: dict[str, str]  # what `biomx datasets` lists and exports: name -> one-line description

    def check_config(self, cfg: ExperimentConfig) -> None: ...

    def load(self, cfg: ExperimentConfig) -> Samples: ...

    def split(self, cfg: ExperimentConfig, samples: Samples, labels: np.ndarray | None) -> dict[str, np.ndarray]:
        """Splits for one of `split_methods`."""
        ...

    def sample_digests(self, samples: Samples) -> list[str] | None:
        """A content hash per sample (equal inputs, equal strings), to warn when identical inputs
        sit in more than one split; None when that is not cheap to compute."""
        ...

    def build_datasets(self, samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray],
                       cfg: ExperimentConfig) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]: ...

    def inference_model(self, model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module: ...

    def explain(self, model: nn.Module, task: Task, test: TestView, n: int,
                cfg: ExperimentConfig) -> list[dict]:
        """Report sections explaining `n` test samples (and any modality-specific tables)."""
        ...

    def read_inputs(self, preprocessing: dict[str, Any], inputs: list[str | Path],
                    skip_errors: bool = False) -> tuple[Any, list[str], list[tuple[str, str]]]:
        """(model-ready inputs, their names, skipped (input, reason)) for `biomx predict`."""
        ...

    def add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Extra CLI subcommands (each sets `func`)."""
        ...

    def export_dataset(self, name: str, out_dir: str | Path, *, format: str | None, limit: int | None,
                       overwrite: bool = False) -> str:
        """Write one of `datasets` as real files under `out_dir` (refusing to replace a file that is
        there unless `overwrite`); the line to print."""
        ...


@runtime_checkable
class RowTask(Task, Protocol):
    """A task with one prediction row per sample, evaluated and predicted by `biomx.batched`."""

    output_prefix: str  # predictions.csv columns are <prefix>_<output name>

    def output_names(self) -> list[str]: ...

    def prediction_columns(self, predictions: np.ndarray) -> dict[str, np.ndarray]: ...

    def truth_column(self, targets: np.ndarray) -> list[str]: ...

    def evaluate(self, predictions: np.ndarray, targets: np.ndarray, *, n_bootstrap: int, ci: float,
                 seed: int) -> dict[str, Any]:
        """Metrics with CIs; the dict has "kind", "n", "metrics" and "headline" (names to summarise)."""
        ...

    def uncertainty_errors(self, predictions: np.ndarray, std: np.ndarray, targets: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray, list[str], str]:  # fmt: skip
        """(|error|, std, names) per output column, and the error's name ("rmse" for a Gaussian std)."""
        ...


@runtime_checkable
class SpatialModality(Modality, Protocol):
    """A modality of images with a pixel or voxel grid, which a dense task (segmentation) can label.

    It reads image/mask pairs from its paired sources, reads single scans for prediction, and
    writes a predicted mask back on a scan's own grid and in its own file format."""

    spatial_dims: int  # 2 or 3
    pair_sources: tuple[str, ...]  # data.source values holding image/mask pairs
    mask_suffix: str  # of the mask files it writes

    def scan_settings(self, cfg: ExperimentConfig) -> tuple[Any, str]:
        """(its ScanConfig, where that sits in the config, e.g. "data.volume")."""
        ...

    def read_pairs(self, path: str | Path) -> Any:
        """The pairs of a paired source: `.cases` (id, image, label path), `.classes`, `.channels`,
        `.spatial_dims`."""
        ...

    def read_limits(self, cfg: ExperimentConfig) -> dict[str, int]:
        """The size limits its readers take as keywords (e.g. {"max_voxels": ...}), from the config;
        recorded with the run's preprocessing so that predict reads with the run's own limits."""
        ...

    def read_pair(self, image: Path, label: Path, nan_policy: str, tolerance_mm: float,
                  **limits: int) -> tuple[Any, Any]:
        """(image, mask) `biomx.data.cases.Scan`s, refused unless on the same grid; a file whose
        header declares more than `limits` allow is refused before it is read."""
        ...

    def read_scan(self, path: str | Path, mask: bool = False, nan_policy: str = "raise", **limits: int) -> Any: ...

    def scan_reference(self, scan: Any) -> Any:
        """A JSON-able record of the scan's geometry, all `write_mask` needs."""
        ...

    def write_mask(self, mask: np.ndarray, reference: Any, path: Path, *, classes: list[str] | None = None,
                   model: str = "unknown") -> Path:
        """Write `mask` on the reference grid in the modality's format; `classes` (background first)
        and the `model` name label it where the format has room (e.g. segment names)."""
        ...

    def collect_scans(self, inputs: list[str | Path]) -> list[Path]: ...

    def scan_stem(self, path: Path, used: set[str]) -> str:
        """A name for the scan's mask file, unique among `used` (and added to it)."""
        ...


# ------------------------------------------------------------------ optional members
# A plug-in may offer these; code that uses them (`biomx.predictor`) checks with isinstance and
# says what is missing, so a plug-in without them works everywhere else as before.


@runtime_checkable
class InMemoryInputs(Protocol):
    """A modality that also takes in-memory inputs (arrays, tensors, strings) from Python."""

    def read_objects(self, preprocessing: dict[str, Any], objects: Any) -> tuple[Any, list[str]]:
        """(model-ready inputs, one name per sample) for `objects`: one object, a list of them, or
        one array holding a batch; prepared exactly as `read_inputs` prepares the files that hold
        them. A DataError (one line) for an object of a kind it does not read."""
        ...


@runtime_checkable
class InMemoryScans(Protocol):
    """A spatial modality that also makes scans of in-memory arrays (segmentation from Python)."""

    def scan_from_array(self, array: Any, name: str, nan_policy: str = "raise") -> Any:
        """The `biomx.data.cases.Scan` that `read_scan` would give for a file holding `array`
        (unit spacing: an array has none); a DataError for an array of another layout."""
        ...


@runtime_checkable
class DescribesData(Protocol):
    """A modality that knows where a run's data came from (the model card's data sections)."""

    def data_card(self, cfg: ExperimentConfig) -> dict[str, str]:
        """What it knows of `cfg`'s data, as far as known (absent keys: "not stated"): "description",
        "citation", "licence", and "deidentification" (how its inputs are de-identified or checked).
        Never a path beyond the data's own name, never a sample id."""
        ...


@runtime_checkable
class LabellingTask(Protocol):
    """A task whose predictions are class probabilities, labelled by the task (one class per
    sample, 0/1 per label, or a label map): `classes` name what the labels index."""

    classes: list[str]

    def predict_labels(self, predictions: np.ndarray) -> np.ndarray:
        """Label indices (or 0/1 per label) from task-space predictions."""
        ...


@runtime_checkable
class SolverTask(Protocol):
    """A task a solver can fit directly (a kernel machine, a forest, a booster): it states its
    targets as a plain regression or classification problem. A solver's raw outputs are then the
    values themselves, or class log-probabilities (with one output: the log-odds of the second
    class), which is what the task's `loss` and `predictions` read."""

    def solver_targets(self, targets: torch.Tensor) -> tuple[str, np.ndarray]:
        """("values", (N, K) float64 in raw-output space, NaN = missing) or ("classes", (N,) int64)."""
        ...


@runtime_checkable
class AuditsData(Protocol):
    """A modality whose inputs the data audit compares and measures (`biomx audit-data`,
    `biomx.data_audit`). Each member is optional: a check whose member is missing says
    "not checked", it does not fail."""

    def fingerprints(self, samples: Samples) -> Fingerprints | None:
        """An exact key per sample (equal keys: identical inputs) and, where it can, near-duplicate
        vectors with their metric and threshold (`biomx.data_audit.fingerprints`)."""
        ...

    def describe_sizes(self, samples: Samples) -> dict[str, np.ndarray]:
        """Per-sample measures (size, intensity, length) in which the audit looks for outliers."""
        ...

    def missing_values(self, samples: Samples) -> dict[str, int]:
        """Missing input values per field (e.g. empty table cells)."""
        ...


@runtime_checkable
class DriftStatistics(Protocol):
    """A modality whose inputs `biomx drift` describes (`biomx.drift`): per-sample statistics of raw
    graph inputs (`ExportableModality.read_raw` / `raw_rows`), compared between a run's training
    data and new inputs with a two-sample test each (numbers: KS; anything else: chi-square)."""

    def input_statistics(self, preprocessing: dict[str, Any], raw: torch.Tensor) -> dict[str, np.ndarray]:
        """Statistic name -> one value per input row (intensity, length, composition, a column)."""
        ...


@runtime_checkable
class FittedModel(Protocol):
    """A model fitted by a solver in one call, not by gradient steps. Its fitted state lives in
    buffers, so checkpoints (safetensors), ensembles, evaluation and predict treat it as any
    network; the Trainer calls `fit` instead of running epochs."""

    def fit(self, x: Any, targets: torch.Tensor, task: SolverTask, *, val: tuple[Any, torch.Tensor] | None,
            seed: int) -> dict[str, Any]:  # fmt: skip
        """Fit to a whole split's batch `x` (as the dataset collates it) and its targets; `val`
        is the validation split (None when there is none). Returns facts worth logging (e.g. the
        chosen C, the number of trees)."""
        ...


@runtime_checkable
class SubgroupModality(Protocol):
    """A modality that offers per-sample columns to group the test split by (`eval.subgroups`):
    manifest or table columns, header fields the user asked for. `biomx.fairness` bins numbers."""

    def subgroup_table(self, cfg: ExperimentConfig, samples: Samples, requested: list[str]) -> dict[str, Any]:
        """Column name -> one value per sample (text or numbers; "" or NaN = missing): every
        column it can offer cheaply, plus those of `requested` that cost a read (e.g. headers)."""
        ...


@runtime_checkable
class GroupedTask(Protocol):
    """A task that measures what only it knows across subgroups of the test split (`biomx.fairness`
    scores each group with the task's own `evaluate`; this adds disparities and group thresholds)."""

    def group_disparity(self, predictions: np.ndarray, targets: np.ndarray, groups: np.ndarray) -> dict[str, Any] | None:
        """Disparity measures across `groups` (one label per sample); None where the task has none."""
        ...

    def group_thresholds(self, val: tuple[np.ndarray, np.ndarray, np.ndarray],
                         test: tuple[np.ndarray, np.ndarray, np.ndarray], seed: int) -> dict[str, Any] | None:
        """Per-group decision rules fitted on `val` (predictions, targets, groups) and the disparity
        on `test` before and after; None where the task has none."""
        ...


@runtime_checkable
class AttributingModality(Protocol):
    """A modality with two or more attribution methods for its test inputs, which the explanation
    checks (`biomx.explain.sanity`) run on the trained and on a re-initialised model and compare."""

    def attribution_methods(self, model: nn.Module, test: TestView, cfg: ExperimentConfig) -> dict[str, Any]:
        """For the run's trained `model` (e.g. no gradient method for a fitted solver):
        method name -> fn(model, task, inputs, columns) -> per-sample attributions: `inputs` as
        `test.data.__getitems__` batches them (on the model's device), `columns` the (N,) output column
        each sample explains; a tensor (N, ...) or a list of N arrays, alike across methods where they
        are to be compared. {} (or one method) where the run's model or data has no two."""
        ...


# ------------------------------------------------------------------ export and serving
# `biomx export`, `biomx predict --engine onnx` and `biomx serve` run a run's model as one graph:
#   raw input -> modality's `prepare` (tensor ops) -> every member through `inference_model` ->
#   task.predictions -> mean (and std across ensemble members).
# A modality that can feed such a graph offers `ExportableModality`; one that cannot (a graph
# network's batches are not a tensor) either lacks it or refuses in `export_plan` with one line.


@dataclass
class GraphInput:
    """The one tensor an exported graph takes, as its sidecar states it."""

    name: str  # e.g. "image", "tokens", "features", "fingerprint"
    dtype: str  # "float32" or "int64"
    shape: list[int | str]  # a str names a dynamic axis ("batch", "height", "length")
    description: str  # what a caller must put in it (scaling, channel order, vocabulary)


@dataclass
class ExportPlan:
    """How a run's raw inputs become model-ready inside an exported graph."""

    prepare: nn.Module  # raw input -> model-ready input; tensor ops only (traced into the graph)
    input: GraphInput
    outside: str  # what happens before the graph (decoding, featurisation), one sentence
    inside: list[str]  # the steps inside the graph, e.g. ["resize to 64x64 (bilinear)", "normalise ..."]
    example: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for clients (vocabulary, feature names)


@runtime_checkable
class ExportableModality(Protocol):
    """A modality whose inputs can be fed to an exported graph as one raw tensor."""

    def export_plan(self, preprocessing: dict[str, Any]) -> ExportPlan:
        """The graph's input and preprocessing for a run; `biomx.errors.ExportRefused` (one line
        saying why) when this run's inputs cannot go into a graph."""
        ...

    def read_raw(self, preprocessing: dict[str, Any], inputs: list[str | Path],
                 skip_errors: bool = False) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
        """Like `read_inputs`, but stops where the graph starts: `plan.prepare(raw)` equals what
        `read_inputs` gives for the same files (to float rounding)."""
        ...

    def raw_rows(self, preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
        """Raw graph inputs of the given rows of a run's samples (the export check feeds the test
        split); `plan.prepare(raw_rows(...))` equals the split dataset's model-ready batch."""
        ...


@runtime_checkable
class ExplainsInputs(Protocol):
    """A modality that can explain single new inputs with an image (the server's upload route)."""

    def explain_inputs(self, model: nn.Module, task: Task, preprocessing: dict[str, Any], raw: torch.Tensor,
                       model_name: str) -> list[np.ndarray]:  # fmt: skip
        """One RGB uint8 (H, W, 3) overlay per raw input (e.g. a saliency map of the predicted class)."""
        ...
