"""The runs a server serves: each one's engine, micro-batcher, metadata and model card.

A model is named after its run folder. Engines open in a background thread (the server answers
`live` at once and `ready` when every model has loaded); a run that cannot be served says why in
one line, on the console and in its metadata.
"""

from __future__ import annotations

import logging
import math
import threading
from functools import partial
from pathlib import Path
from typing import Any

import torch

from biomx.drift.log import DriftLog
from biomx.errors import BiomxError
from biomx.export.engines import Engine, open_engine
from biomx.runs import read_json
from biomx.serve.batcher import MicroBatcher
from biomx.serve.metrics import Metrics

log = logging.getLogger("biomx.serve")

DATATYPES = {"float32": "FP32", "int64": "INT64"}  # graph dtype -> Open Inference Protocol datatype
PLATFORMS = {"torch": "pytorch", "onnx": "onnxruntime", "int8": "onnxruntime"}
CARD_KEYS = ("intended_use", "limitations", "description")  # free text a run may record in run.json


class ServedModel:
    """One run behind the server."""

    def __init__(self, run_dir: Path, *, engine: str, max_batch: int, max_wait_ms: float, metrics: Metrics,
                 threads: int | None = None, drift_log: DriftLog | None = None) -> None:  # fmt: skip
        self.run_dir, self.name, self.engine_name = run_dir, run_dir.name, engine
        self.drift_log = drift_log  # `--drift-log`: each engine call's input statistics and predictions
        self.info: dict[str, Any] = read_json(run_dir / "run.json")
        self.threads = threads
        self.engine: Engine | None = None
        self.error: str | None = None  # why it could not be loaded
        self.batcher = MicroBatcher(self._run, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                    max_queue_rows=max_batch * 64,
                                    on_batch=metrics.batch_size.labels(self.name).observe,
                                    on_depth=metrics.queue_depth.labels(self.name).set,
                                    initializer=None if threads is None else partial(torch.set_num_threads, threads))  # fmt: skip

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def load(self) -> None:
        try:
            self.engine = open_engine(self.run_dir, self.engine_name, threads=self.threads)  # ONNX Runtime's threads
        except BiomxError as e:
            self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.error("model %s cannot be served: %s", self.name, self.error)

    def _run(self, rows):
        assert self.engine is not None
        out = self.engine.run(rows)
        if self.drift_log is not None:
            self.drift_log.record(self.name, self.engine.loaded, rows, out[0])
        return out

    # ------------------------------------------------------------------ descriptions

    def metadata(self) -> dict[str, Any]:
        """Open Inference Protocol model metadata (plus the plan's description in `parameters`)."""
        out: dict[str, Any] = {"name": self.name, "versions": ["1"], "platform": PLATFORMS[self.engine_name]}
        if self.engine is None:
            return {**out, "inputs": [], "outputs": [], "parameters": {"error": self.error or "loading"}}
        loaded = self.engine.loaded
        spec = loaded.plan.input
        rest = [] if loaded.task.out_dim == 1 else [loaded.task.out_dim]
        outputs = [{"name": "predictions", "datatype": "FP32", "shape": [-1, *rest]}]
        if loaded.graph.ensemble:
            outputs.append({"name": "std", "datatype": "FP32", "shape": [-1, *rest]})
        shape = [d if isinstance(d, int) else -1 for d in spec.shape]
        return {**out, "inputs": [{"name": spec.name, "datatype": DATATYPES[spec.dtype], "shape": shape}],
                "outputs": outputs,
                "parameters": {"description": spec.description, "outside": loaded.plan.outside,
                               "inside": list(loaded.plan.inside), "example": loaded.plan.example,
                               "classes": list(loaded.task.classes), "engine": self.engine_name}}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """One entry of `GET /models`."""
        task = self.info.get("task") or {}
        entry: dict[str, Any] = {"name": self.name, "ready": self.ready, "modality": self.info.get("modality"),
                                 "task": task.get("name"), "kind": task.get("kind"),
                                 "classes": list(task.get("classes") or []), "engine": self.engine_name}  # fmt: skip
        if self.engine is not None:
            entry["input"] = self.engine.loaded.plan.input.description
            entry["ensemble"] = len(self.engine.loaded.graph.members)
        if self.error:
            entry["error"] = self.error
        entry["test_metrics"] = self._headline_metrics()
        return entry

    def card(self) -> dict[str, Any]:
        """The model card: what the run records (run.json, data.json, test_metrics.json) and, under
        `model_card`, the run's own model_card.json (Mitchell et al. 2019 sections)."""
        data = _read_optional(self.run_dir / "data.json")
        data_entry = {k: data[k] for k in ("source", "n", "split_sizes", "classes", "skipped") if k in data}
        metrics = _read_optional(self.run_dir / "test_metrics.json")
        card: dict[str, Any] = {
            "name": self.name, "biomx_version": self.info.get("biomx_version"),
            "modality": self.info.get("modality"), "data": data_entry, "model": self.info.get("model"),
            "task": self.info.get("task"), "uncertainty": self.info.get("uncertainty"),
            "test": {k: metrics[k] for k in ("kind", "n", "headline", "ci", "n_bootstrap", "metrics") if k in metrics},
        }  # fmt: skip
        if self.engine is not None:
            plan = self.engine.loaded.plan
            card["input"] = {"name": plan.input.name, "dtype": plan.input.dtype, "shape": plan.input.shape,
                             "description": plan.input.description, "outside": plan.outside,
                             "inside": list(plan.inside)}  # fmt: skip
        card.update({k: self.info[k] for k in CARD_KEYS if isinstance(self.info.get(k), str)})
        written = _read_optional(self.run_dir / "model_card.json")  # every run writes one (biomx.card)
        if written:
            card["model_card"] = written
        return json_safe(card)

    def _headline_metrics(self) -> dict[str, Any]:
        metrics = _read_optional(self.run_dir / "test_metrics.json")
        values = metrics.get("metrics") or {}
        names = metrics.get("headline") or list(values)
        return json_safe({n: values[n] for n in names if n in values})


def _read_optional(path: Path) -> dict[str, Any]:
    try:
        value = read_json(path)
    except (OSError, ValueError, BiomxError):
        return {}
    return value if isinstance(value, dict) else {}


def json_safe(value: Any) -> Any:
    """NaN and infinities (an undefined metric) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class ModelSet:
    """Every served model by name; loads them in the background."""

    def __init__(self, runs: list[str | Path], *, engine: str, max_batch: int, max_wait_ms: float,
                 metrics: Metrics, threads: int | None = None, drift_log: DriftLog | None = None) -> None:  # fmt: skip
        self.models: dict[str, ServedModel] = {}
        for run in runs:
            run_dir = Path(run).resolve()  # "." and "runs/x/" are named after the folder too
            if not (run_dir / "run.json").is_file():
                raise BiomxError(f"{run_dir}: not a run folder (no run.json); pass folders that biomx train wrote")
            if run_dir.name in self.models:
                raise BiomxError(f"{run_dir}: two runs are named {run_dir.name!r}; the model name is the "
                                 "run folder's name, so serve runs with distinct folder names")  # fmt: skip
            self.models[run_dir.name] = ServedModel(run_dir, engine=engine, max_batch=max_batch,
                                                    max_wait_ms=max_wait_ms, metrics=metrics, threads=threads,
                                                    drift_log=drift_log)  # fmt: skip
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    def load_all(self) -> None:
        for model in self.models.values():
            if model.engine is None and model.error is None:
                model.load()

    def load_in_background(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self.load_all, name="biomx-load", daemon=True)
            self._thread.start()

    def close(self) -> None:
        for model in self.models.values():
            model.batcher.close()
