"""`biomx export RUN`: the run's graph as ONNX, a torch.export program and int8 ONNX, each checked
against PyTorch on the run's test inputs before it is written, plus the model.json sidecar.

Every format is written to a temp file beside its target and checked there; only when every
requested format passes are they renamed into place (a failed check leaves nothing new behind).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.engine.checkpoint import check_target
from biomx.errors import BiomxError, ExportRefused
from biomx.export import check, trace
from biomx.export.engines import FILES, SIDECAR, OnnxEngine, TorchEngine
from biomx.export.graph import LoadedGraph, load_graph
from biomx.export.quantize import write_int8
from biomx.export.sidecar import file_entry, sidecar
from biomx.protocols import RowTask
from biomx.runs import write_json

FORMATS = ("onnx", "torch", "int8")
TARGETS = {**FILES, "torch": "model.pt2"}


class Pt2Runner:
    """A torch.export program, run like an engine (to check and time it)."""

    def __init__(self, path: Path) -> None:
        self.module = trace.load_pt2(path)

    @torch.no_grad()
    def run(self, raw: torch.Tensor) -> check.Outputs:
        out = self.module(torch.as_tensor(raw))
        if isinstance(out, (tuple, list)):
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None


def temp_path(out: Path, fmt: str) -> Path:
    stem, _, suffix = TARGETS[fmt].partition(".")
    return out / f".{stem}.tmp-{os.getpid()}.{suffix}"


class Export:
    """One export in progress: the temp files written so far and what each check found."""

    def __init__(self, loaded: LoadedGraph, data: check.CheckData, out: Path) -> None:
        self.loaded, self.data, self.out = loaded, data, out
        self.model = trace.model_name(loaded)
        self.reference = TorchEngine(loaded).run(data.raw)
        self.temps: dict[str, Path] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.latency = {"torch eager": check.latency_ms(TorchEngine(loaded).run, data.raw)}
        rows = data.raw if len(data.raw) >= 2 else data.raw.repeat(2, *[1] * (data.raw.dim() - 1))
        self.example = rows[:8]  # two rows at least: a batch of one would fix the batch axis
        self.program = trace.export_program(loaded, self.example)

    def checked(self, fmt: str, runner: Any, latency_name: str | None, **facts: Any) -> check.Outputs:
        """Run `runner` on the check rows, record the comparison (and `facts`), refuse a failure."""
        try:
            got = runner.run(self.data.raw)
        except Exception as err:  # e.g. an axis the file fixed that the test rows do not fit
            raise ExportRefused(f"{self.model}: the {fmt} export fails to run on the test rows "
                                f"({trace.first_line(err)})") from None  # fmt: skip
        result = self.checks[fmt] = {**facts, **check.compare(self.loaded, self.reference, got)}
        check.enforce(fmt, result, self.model)
        if fmt == "int8":
            del result["tolerance"]  # int8 is held to its labels, not to a difference
        if latency_name:
            self.latency[latency_name] = check.latency_ms(runner.run, self.data.raw)
        return got

    def onnx(self) -> None:
        path = self.temps["onnx"] = temp_path(self.out, "onnx")
        trace.write_onnx(self.loaded, self.program, self.example, path)
        self.checked("onnx", OnnxEngine(self.loaded, path, "onnx"), "onnx runtime fp32")

    def pt2(self) -> None:
        path = self.temps["torch"] = temp_path(self.out, "torch")
        trace.write_pt2(self.loaded, self.program, path)
        self.checked("torch", Pt2Runner(path), None)

    def int8(self) -> None:
        path = self.temps["int8"] = temp_path(self.out, "int8")
        dtype = np.float32 if self.loaded.plan.input.dtype == "float32" else np.int64
        method = write_int8(self.temps["onnx"], path, self.loaded.plan.input.name,
                            self.data.calibration.numpy().astype(dtype), self.model)  # fmt: skip
        got = self.checked("int8", OnnxEngine(self.loaded, path, "int8"), "onnx runtime int8", method=method)
        self.checks["int8"]["test_metrics"] = check.metric_change(self.loaded, self.data, self.reference[0], got[0])

    def write(self, formats: tuple[str, ...] | list[str]) -> dict[str, dict[str, Any]]:
        """Write and check every format, then rename them all into place; their file entries."""
        if "onnx" in formats or "int8" in formats:
            self.onnx()
        if "torch" in formats:
            self.pt2()
        if "int8" in formats:
            self.int8()
        files = {fmt: {**file_entry(self.temps[fmt]), "file": TARGETS[fmt]} for fmt in formats}
        for fmt in formats:
            os.replace(self.temps.pop(fmt), self.out / TARGETS[fmt])
        return files

    def discard(self) -> None:
        for path in self.temps.values():
            path.unlink(missing_ok=True)


def export_run(run_dir: str | Path, out: str | Path | None = None, formats: tuple[str, ...] | list[str] = FORMATS,
               checkpoint: str = "best", echo: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Export a run (see the module docstring); returns the sidecar written to `<out>/model.json`.

    Raises:
        BiomxError: no run, an unknown format, its data no longer readable (the check needs it).
        ExportRefused: a modality without an export plan, an unsupported op, a failed check.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise BiomxError(f"--formats: unknown format {unknown[0]!r}; use onnx, torch, int8" if unknown
                         else "--formats: name at least one of onnx, torch, int8")  # fmt: skip
    run_dir = Path(run_dir)
    loaded = load_graph(run_dir, checkpoint)
    if not isinstance(loaded.task, RowTask):  # e.g. masks predicted window by window over a whole scan
        raise ExportRefused(f"{run_dir}: a {loaded.task.kind} run cannot be exported (its predictions are not "
                            "one row per input; the check and the engines need that)")  # fmt: skip
    out = Path(out) if out is not None else run_dir / "export"
    made, job = not out.exists(), None
    try:
        for fmt in (*formats, "sidecar"):
            check_target(out / TARGETS.get(fmt, SIDECAR))  # a folder or symlink there: refused before the work
        job = Export(loaded, check.check_data(loaded), out)
        files = job.write(formats)
    except BaseException:
        if job is not None:
            job.discard()  # the temp files of a failed check
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no trace, not even its folder
        raise
    job.discard()  # the fp32 file made only to quantise
    info = sidecar(loaded, checkpoint, job.reference[0], {f: job.checks[f] for f in formats}, job.latency, files,
                   job.data.split)  # fmt: skip
    write_json(out / SIDECAR, info)
    for fmt in [f for f in FORMATS if f not in formats]:  # an earlier export's file would not match this sidecar
        stale = out / TARGETS[fmt]
        if stale.is_file():
            stale.unlink()
            echo(f"removed {stale} (from an earlier export; not in --formats)")
    for line in summary(info, out):
        echo(line)
    return info


def summary(info: dict[str, Any], out: Path) -> list[str]:
    """One line per format: file, size, max difference, label agreement, latency."""
    lines = []
    latency_of = {"onnx": "onnx runtime fp32", "int8": "onnx runtime int8", "torch": "torch eager"}
    for fmt, result in info["checks"].items():
        size = info["files"][fmt]["bytes"] / 1024
        agreement = result.get("label_agreement")
        ms = info["latency_ms_batch64"].get(latency_of[fmt])
        lines.append(f"{fmt:5}  {out / TARGETS[fmt]}  {size:.0f} KiB  max diff {result['max_abs_diff']:.2g}"
                     + (f"  labels {agreement:.1%} same" if agreement is not None else "")
                     + (f"  {ms:.3g} ms per batch of 64" if ms is not None and fmt != "torch" else ""))  # fmt: skip
        for name, change in (result.get("test_metrics") or {}).items():
            if isinstance(change, dict):
                fp32, int8, diff = (change[key] for key in ("fp32", "int8", "change"))  # None: not a number
                lines.append(f"       test {name}: fp32 {fp32 if fp32 is None else f'{fp32:.4f}'}, int8 "
                             f"{int8 if int8 is None else f'{int8:.4f}'} ({diff if diff is None else f'{diff:+.4f}'})")
    lines.append(f"torch eager: {info['latency_ms_batch64']['torch eager']:.3g} ms per batch of 64; "
                 f"sidecar {out / SIDECAR}")  # fmt: skip
    return lines
