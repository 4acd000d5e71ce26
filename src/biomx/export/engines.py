"""Engines that run an exported run: PyTorch (the `RunGraph` itself), ONNX Runtime fp32 and int8.

Every engine takes the raw graph input (`ExportPlan.input`: what `modality.read_raw` gives) and
returns task-space predictions (the mean over ensemble members) and their std (None for one
model), so `biomx predict --engine` and `biomx serve` treat them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from biomx.errors import BiomxError
from biomx.export.graph import LoadedGraph, load_graph
from biomx.plugins import import_extra
from biomx.runs import read_json

ENGINES = ("torch", "onnx", "int8")
FILES = {"onnx": "model.onnx", "int8": "model.int8.onnx"}  # under RUN/export/
SIDECAR = "model.json"
CHUNK = 256  # rows per call: bounds the memory of one huge request


class Engine(Protocol):
    name: str  # "torch" | "onnx" | "int8"
    loaded: LoadedGraph

    def run(self, raw: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(task-space mean predictions, their std across members or None)."""
        ...


def _split(out: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(out, (tuple, list)):
        return np.asarray(out[0]), np.asarray(out[1])
    return np.asarray(out), None


def _join(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
    preds = np.concatenate([p for p, _ in parts])
    std = None if parts[0][1] is None else np.concatenate([s for _, s in parts])
    return preds, std


class TorchEngine:
    """The run's `RunGraph` in eager PyTorch (the reference every export is checked against)."""

    name = "torch"

    def __init__(self, loaded: LoadedGraph) -> None:
        self.loaded = loaded

    @torch.no_grad()
    def run(self, raw: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = torch.as_tensor(raw)
        if not len(x):
            return _empty(self.loaded)
        parts = []
        for chunk in x.split(CHUNK):
            out = self.loaded.graph(chunk)
            parts.append(_split([t.numpy() for t in out] if isinstance(out, tuple) else out.numpy()))
        return _join(parts)


def _empty(loaded: LoadedGraph) -> tuple[np.ndarray, np.ndarray | None]:
    out = np.zeros((0, *([] if loaded.task.out_dim == 1 else [loaded.task.out_dim])), dtype=np.float32)
    return out, (out.copy() if loaded.graph.ensemble else None)


class OnnxEngine:
    """An exported ONNX file (fp32 or int8) in ONNX Runtime on the CPU."""

    def __init__(self, loaded: LoadedGraph, path: Path, name: str, threads: int | None = None) -> None:
        ort = import_extra("onnxruntime", f"biomx predict --engine {name}")
        self.loaded, self.name, self.path = loaded, name, path
        options = ort.SessionOptions()
        if threads is not None:  # None: ONNX Runtime's default (one intra-op thread per core)
            options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning: on shared or busy cores (a server's other work,
        # other jobs) spinning threads steal the cores the computation needs; measured +72% samples/s
        # for the sequence CNN at 2 threads on a loaded machine (benchmarks/export_speed.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.dtype = np.int64 if loaded.plan.input.dtype == "int64" else np.float32

    def run(self, raw: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not len(x):
            return _empty(self.loaded)
        parts = []
        for start in range(0, len(x), CHUNK):
            out = self.session.run(None, {self.input_name: x[start:start + CHUNK]})
            parts.append(_split(out if len(out) > 1 else out[0]))
        return _join(parts)


def export_file(run_dir: Path, engine: str) -> Path:
    """RUN/export/<file> of an ONNX engine, or the one line that says to export first."""
    path = run_dir / "export" / FILES[engine]
    if not path.is_file():
        raise BiomxError(f"{path}: not exported yet; run biomx export {run_dir}")
    return path


def open_engine(run_dir: str | Path, engine: str = "torch", *, threads: int | None = None) -> Engine:
    """An engine for a run: "torch" (eager), "onnx" (RUN/export/model.onnx) or "int8"
    (RUN/export/model.int8.onnx), each with the run's `LoadedGraph` (modality, task, plan).
    `threads`: ONNX Runtime's intra-op threads (None: its default); the torch engine uses
    PyTorch's setting (`torch.set_num_threads`) of the thread that calls it.

    Raises:
        BiomxError: an unknown engine, no run, an ONNX engine for a run not exported yet.
        ExportRefused: a run whose modality has no export plan.
    """
    if engine not in ENGINES:
        raise BiomxError(f"engine {engine!r}: unknown; use one of {', '.join(ENGINES)}")
    run_dir = Path(run_dir)
    if engine == "torch":
        return TorchEngine(load_graph(run_dir))
    sidecar_path = run_dir / "export" / SIDECAR
    sidecar = read_json(sidecar_path) if sidecar_path.is_file() else {}
    loaded = load_graph(run_dir, sidecar.get("checkpoint", "best"))  # an unknown run says so first
    return OnnxEngine(loaded, export_file(run_dir, engine), engine, threads)
