"""A trained run as a predictor with scikit-learn habits: `load(run).predict(x)`, `.predict_proba(x)`.

    from biomx.predictor import load
    model = load("runs/chest-20260101-120000")
    model.classes_                      # array(['normal', 'pneumonia'], dtype='<U9')
    model.predict(["a.png", "b.png"])   # array(['normal', 'pneumonia'], ...)
    model.predict_proba(images)         # (N, 2), rows sum to 1

`x` is what the run's modality reads: file paths (a str or Path, or a list of them; read by the
modality's own `read_inputs`, exactly as `biomx predict` reads them), or in-memory inputs
(arrays, tensors, strings) that the modality prepares with its `read_objects` (protocol
`InMemoryInputs`) as it prepares the files holding them. A string naming an existing file or
folder is a path; any other string is an input of its own (a molecule or a sequence).

The model(s) run as in `biomx predict`: every deep-ensemble member through the modality's
`inference_model`, MC dropout passes as the run was evaluated, the mean of the task-space
predictions. A task with one row per sample (`RowTask`) turns those into labels or values;
any other task (segmentation) runs its own `predict`, with the masks it would write kept in
memory and returned instead. Nothing here knows a modality or a task by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.batched import _check_finite, batches
from biomx.engine.trainer import enable_dropout
from biomx.errors import BiomxError
from biomx.modalities import get_modality
from biomx.protocols import (
    InMemoryInputs,
    InMemoryScans,
    LabellingTask,
    Modality,
    PredictRequest,
    RowTask,
    Task,
)
from biomx.runs import load_run_models
from biomx.tasks import task_from_info
from biomx.uncertainty import mean_and_std


def load(run: str | Path, *, checkpoint: str = "best", device: str = "cpu", mc_dropout: int | None = None,
         batch_size: int = 256) -> Predictor:  # fmt: skip
    """A run's model(s), ready to predict.

    Args:
        run: a run directory (or an interrupted one: its last checkpoint).
        checkpoint: "best" (falls back to "last" when there is no best yet) or "last".
        device: "cpu", "cuda", "cuda:1", "mps".
        mc_dropout: Monte Carlo dropout passes per model (None: as the run was evaluated).
        batch_size: samples per forward pass.

    Raises:
        BiomxError: no run or checkpoint there, a corrupt or diverged checkpoint, a device that
            is not available, a plug-in that is not registered.
    """
    if checkpoint not in ("best", "last"):
        raise BiomxError(f"checkpoint: expected 'best' or 'last', got {checkpoint!r}")
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise BiomxError(f"device: {device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise BiomxError(f"device: {device!r} was asked for but no CUDA GPU is available")
    if where.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise BiomxError(f"device: {device!r} was asked for but is not available")
    models, info = load_run_models(run, checkpoint)
    # Runs written before run.json named its modality kept it in the preprocessing record.
    modality = get_modality(info.get("modality") or info["preprocessing"]["modality"])
    task = task_from_info(info["task"])
    passes = info.get("uncertainty", {}).get("mc_dropout", 0) if mc_dropout is None else mc_dropout
    return Predictor(Path(run), models, info, modality, task, where, passes=passes, batch_size=batch_size)


class Predictor:
    """A trained run's model(s) with the estimator methods of scikit-learn (no `fit`: train with
    `biomx train`). Build it with `load`."""

    def __init__(self, run_dir: Path, models: list[nn.Module], info: dict[str, Any], modality: Modality, task: Task,
                 device: torch.device, *, passes: int = 0, batch_size: int = 256) -> None:  # fmt: skip
        self.run_dir, self.info, self.modality, self.task = run_dir, info, modality, task
        self.device, self.passes, self.batch_size = device, int(passes), int(batch_size)
        self.preprocessing: dict[str, Any] = info["preprocessing"]
        self._models = models  # as the checkpoint rebuilt them, for a task's own `predict`
        self._inference: list[nn.Module] | None = None  # wrapped and moved on first row prediction

    def __repr__(self) -> str:
        return f"Predictor(run={str(self.run_dir)!r}, modality={self.modality.name!r}, task={self._task_name()!r})"

    # ------------------------------------------------------------------ scikit-learn attributes

    @property
    def classes_(self) -> np.ndarray:
        """The class names `predict` returns and `predict_proba`'s columns follow (a run whose task
        labels its predictions; segmentation: background first). A regression has none."""
        if not isinstance(self.task, LabellingTask):
            raise AttributeError(f"a {self._task_name()} run has no classes_; its outputs are {self.outputs_}")
        return np.asarray(self.task.classes)

    @property
    def outputs_(self) -> list[str]:
        """What the outputs are called: the class names, or a regression's target names."""
        return list(self.task.classes)

    # ------------------------------------------------------------------ predictions

    def predict(self, x: Any) -> np.ndarray:
        """Labels (the class names, one per sample; 0/1 per label for a multilabel run), values in
        the targets' units (a regression: (N,), or (N, T) for T targets), or masks (a run that
        labels pixels: one label map per scan, on the scan's own grid; (N, *S) when all scans
        have one shape, else an object array of masks), or for any other task the columns its own
        `predict` writes, (N, K) in the order of `columns_` (e.g. a survival run's risk and
        survival at each horizon)."""
        if not isinstance(self.task, RowTask):
            masks, columns = self._task_predict(x)
            if columns is not None:
                return columns
            return np.stack(masks) if len({m.shape for m in masks}) == 1 else _object_array(masks)
        preds = self._task_predictions(x)
        if not isinstance(self.task, LabellingTask):
            return np.asarray(preds, dtype=np.float64)
        labels = np.asarray(self.task.predict_labels(preds))
        return self.classes_[labels] if labels.ndim == 1 else labels

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (N, C), columns in `classes_` order (rows sum to 1 for one class per
        sample; a multilabel run's columns are independent probabilities).

        Raises:
            BiomxError: a run whose task gives no class probabilities per sample (a regression,
                a segmentation).
        """
        task = self.task
        if not (isinstance(task, RowTask) and isinstance(task, LabellingTask)):
            raise BiomxError(f"predict_proba: this run's task ({self._task_name()}) gives no class probabilities "
                             "per sample; use predict")  # fmt: skip
        columns = task.prediction_columns(self._task_predictions(x))
        names = [f"{task.output_prefix}_{c}" for c in task.classes]
        if any(name not in columns for name in names):
            raise BiomxError(f"predict_proba: this run's task ({self._task_name()}) gives no probability per class")
        return np.stack([np.asarray(columns[name], dtype=np.float64) for name in names], axis=1)

    # ------------------------------------------------------------------ the work

    def _task_name(self) -> str:
        task = self.info.get("task") or {}
        name, kind = task.get("name"), task.get("kind")
        return f"{name}, {kind}" if name and kind and name != kind else str(name or kind)

    def _read(self, x: Any) -> tuple[Any, list[str]]:
        """(model-ready inputs, names): files through `read_inputs`, objects through `read_objects`."""
        files, items = split_inputs(x)
        if files:
            inputs, names, _ = self.modality.read_inputs(self.preprocessing, items, False)
            return inputs, names
        if not isinstance(self.modality, InMemoryInputs):
            raise BiomxError(f"the {self.modality.name} modality reads files only; pass file paths")
        return self.modality.read_objects(self.preprocessing, items)

    def _inference_models(self) -> list[nn.Module]:
        if self._inference is None:
            self._inference = [self.modality.inference_model(m, self.preprocessing).to(self.device)
                               for m in self._models]  # fmt: skip
        return self._inference

    @torch.no_grad()
    def _task_predictions(self, x: Any) -> np.ndarray:
        """The mean task-space prediction over members and dropout passes, as `biomx predict`."""
        inputs, names = self._read(x)
        passes = []
        for model in self._inference_models():
            for k in range(max(self.passes, 1)):
                model.eval()
                if self.passes > 0:
                    torch.manual_seed(k)  # the dropout masks of `biomx predict`
                    enable_dropout(model)
                preds, start = [], 0
                for batch in batches(inputs, self.batch_size):
                    out = model(batch.to(self.device))
                    _check_finite(out, names, start)  # a diverged model must not label NaN as a class
                    preds.append(self.task.predictions(out).cpu())
                    start += self.batch_size
                passes.append(torch.cat(preds).numpy() if preds else np.zeros((0, self.task.out_dim)).squeeze(-1))
            model.eval()
        return mean_and_std(passes)[0]

    def _task_predict(self, x: Any) -> tuple[list[np.ndarray], np.ndarray | None]:
        """The task's own `predict`, the modality's mask writer swapped for a list: (masks, None)
        for a task that writes masks, else ([], its numeric columns as (N, K), named in
        `columns_`)."""
        files, items = split_inputs(x)
        arrays = None
        if not files:
            if not isinstance(self.modality, InMemoryScans):
                raise BiomxError(f"this run's task ({self._task_name()}) predicts from files here; pass file paths")
            arrays = _scan_arrays(items, getattr(self.modality, "spatial_dims", 0))
        view = _KeptMasks(self.modality, arrays)
        inputs: list[str | Path] = list(items) if files else [Path(name) for name in arrays]
        request = PredictRequest(self._models, self.info, view, inputs, files_dir=Path("masks"),  # type: ignore[arg-type]
                                 run_dir=self.run_dir)  # fmt: skip
        written = self.task.predict(request)
        if view.masks or not files:  # a folder of scans gives one mask per scan, not per input
            if not files and len(view.masks) != len(inputs):
                raise BiomxError(f"this run's task ({self._task_name()}) returns no mask per input")
            return view.masks, None
        numeric = {name: values for name, values in written.items() if name != "path" and _numbers(values)}
        self.columns_ = list(numeric)
        return [], np.column_stack([np.asarray(v, dtype=np.float64) for v in numeric.values()])


class _KeptMasks:
    """The run's modality as a dense task sees it, with two changes: masks are kept, not written,
    and in-memory arrays (name -> array) stand in for scan files."""

    def __init__(self, modality: Modality, arrays: dict[str, Any] | None) -> None:
        self._modality, self._arrays = modality, arrays
        self.masks: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:  # every other member: the modality's own
        return getattr(self._modality, name)

    def write_mask(self, mask: np.ndarray, reference: Any, path: Path, **names: Any) -> Path:
        self.masks.append(np.asarray(mask))
        return path

    def collect_scans(self, inputs: list[str | Path]) -> list[Path]:
        return [Path(p) for p in inputs] if self._arrays is not None else self._modality.collect_scans(inputs)

    def read_scan(self, path: str | Path, mask: bool = False, nan_policy: str = "raise", **limits: int) -> Any:
        if self._arrays is None:
            return self._modality.read_scan(path, mask=mask, nan_policy=nan_policy, **limits)
        return self._modality.scan_from_array(self._arrays[str(path)], str(path), nan_policy)

    def scan_reference(self, scan: Any) -> Any:
        return None if self._arrays is not None else self._modality.scan_reference(scan)


def _numbers(values: list) -> bool:
    """A column of numbers (as written: floats or their text)."""
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _scan_arrays(items: Any, spatial_dims: int) -> dict[str, Any]:
    """name -> array of one scan: each item of a list, or an array (N, C, *S) split along N."""
    if isinstance(items, (np.ndarray, torch.Tensor)):
        items = list(items) if items.ndim == spatial_dims + 2 else [items]
    return {f"[{i}]": item for i, item in enumerate(items)}


def _object_array(items: list[np.ndarray]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _is_file(item: Any) -> bool:
    """A Path, or a string naming an existing file or folder (any other string is an input itself)."""
    if isinstance(item, os.PathLike):
        return True
    if not isinstance(item, str):
        return False
    try:
        return Path(item).exists()
    except (OSError, ValueError):  # a long sequence is no file name (ENAMETOOLONG), nor a NUL byte
        return False


def split_inputs(x: Any) -> tuple[bool, Any]:
    """(whether `x` names files, the inputs): a list of paths, or the objects as given (one array
    holding a batch stays one array; a single object becomes a list of one).

    Raises:
        BiomxError: nothing to predict, paths mixed with in-memory inputs, an input of no kind.
    """
    if isinstance(x, dict) or (hasattr(x, "columns") and hasattr(x, "iloc")):
        return False, x  # a table (a DataFrame, a dict of columns): one batch of rows, as given
    if isinstance(x, (str, os.PathLike)):
        x = [x]
    elif not isinstance(x, (list, tuple, np.ndarray, torch.Tensor)) and (
            hasattr(x, "__array__") or hasattr(x, "__array_interface__")):  # a Pillow image, a pandas Series
        x = np.asarray(x)
    if isinstance(x, np.ndarray) and x.dtype.kind in "USO":  # strings (or objects): one input each
        x = list(x.ravel()) if x.dtype.kind in "US" else list(x)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        if x.ndim == 0 or len(x) == 0:
            raise BiomxError(f"nothing to predict: an array of shape {tuple(x.shape)}")
        return False, x
    if not isinstance(x, (list, tuple)):
        try:
            x = list(x)
        except TypeError:
            raise BiomxError(f"cannot predict from a {type(x).__name__}: pass file paths, arrays or strings") from None
    if not x:
        raise BiomxError("nothing to predict: no inputs")
    is_file = [_is_file(item) for item in x]
    if all(is_file):
        return True, list(x)
    if any(is_file):
        first = next(item for item, f in zip(x, is_file, strict=True) if f)
        raise BiomxError(f"{first}: a file among in-memory inputs; pass either file paths or in-memory inputs")
    return False, list(x)
