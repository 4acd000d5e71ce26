"""Writing a `RunGraph` as ONNX (torch.onnx's dynamo exporter) and as a torch.export program.

Both keep the batch axis dynamic, and every axis the plan's `GraphInput.shape` names (e.g.
"height", "width", "length"). A failure inside torch or ONNX (an unsupported op) becomes one
`ExportRefused` line, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from biomx.errors import ExportRefused
from biomx.export.graph import LoadedGraph
from biomx.plugins import import_extra


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress lines, warnings and log records (they go to stdout/stderr)."""
    names = ("torch", "torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx",
             "torch.fx.experimental.symbolic_shapes", "onnxscript", "root")  # some set their own level
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        # stderr too: torch.export prints the whole traced graph there when it fails
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # torch.export's constraint errors put the useful line (which axis the code fixed) below a header
    for line in lines:
        fixed = re.search(r"marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)", line)
        if fixed:
            return (f"the code fixes the {fixed[1]} axis to {fixed[2]}, which the graph keeps dynamic: e.g. "
                    "len(x) or a shape used as a Python number in a model's or the task's forward")  # fmt: skip
        if "data-dependent" in line:  # e.g. the solvers read a fitted flag or a weight with .item()
            return ("its forward branches on tensor values (e.g. a fitted model's flags or weights read "
                    "as Python numbers), which a traced graph cannot hold")  # fmt: skip
    return (lines[0] if lines else type(err).__name__)[:300]


def dynamic_shapes(loaded: LoadedGraph) -> tuple[dict[int, torch.export.Dim]]:
    """{axis: Dim} for the graph input's named axes (one Dim per name: equal names stay equal)."""
    dims: dict[str, torch.export.Dim] = {}
    axes = {}
    for axis, size in enumerate(loaded.plan.input.shape):
        if isinstance(size, str):
            name = re.sub(r"\W", "_", size) or f"axis{axis}"
            axes[axis] = dims.setdefault(name, torch.export.Dim(name, min=1))
    return (axes,)


def output_names(loaded: LoadedGraph) -> list[str]:
    return ["predictions", "std"] if loaded.graph.ensemble else ["predictions"]


def model_name(loaded: LoadedGraph) -> str:
    return str(loaded.info.get("model", {}).get("name", loaded.run_dir.name))


def export_program(loaded: LoadedGraph, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`loaded.graph` traced by torch.export, every named axis dynamic. Both files are written from
    it: torch.onnx's own capture would fall back to a draft export that silently fixes an axis the
    code specialises (e.g. `len(x)` in a task's `predictions`), where torch.export refuses."""
    try:
        with quiet(), torch.no_grad():
            return torch.export.export(loaded.graph, (example,), dynamic_shapes=dynamic_shapes(loaded))
    except Exception as err:  # torch raises many kinds; the user needs the first line
        raise ExportRefused(f"{model_name(loaded)}: cannot be exported to ONNX or torch.export "
                            f"({first_line(err)})") from None  # fmt: skip


def write_onnx(loaded: LoadedGraph, program: torch.export.ExportedProgram, example: torch.Tensor, path: Path) -> None:
    """The traced graph as ONNX at `path` (dynamic axes named as the plan names them)."""
    for package in ("onnx", "onnxscript"):  # the ONNX exporter needs both: the deploy extra
        import_extra(package, "biomx export")
    try:
        with quiet(), torch.no_grad():
            onnx_program = torch.onnx.export(program, (example,), None, dynamo=True,
                                             input_names=[loaded.plan.input.name], output_names=output_names(loaded),
                                             dynamic_shapes=dynamic_shapes(loaded), verbose=False)  # fmt: skip
            onnx_program.save(str(path))
    except Exception as err:  # an op without an ONNX translation, among others
        path.unlink(missing_ok=True)
        raise ExportRefused(f"{model_name(loaded)}: cannot be exported to ONNX ({first_line(err)})") from None


def write_pt2(loaded: LoadedGraph, program: torch.export.ExportedProgram, path: Path) -> None:
    """The traced graph as a torch.export program (`torch.export.load` reads it without pickle)."""
    try:
        with quiet():
            torch.export.save(program, str(path))
    except Exception as err:
        path.unlink(missing_ok=True)
        raise ExportRefused(f"{model_name(loaded)}: cannot be saved with torch.export ({first_line(err)})") from None


def load_pt2(path: Path) -> torch.nn.Module:
    with quiet():
        return torch.export.load(str(path)).module()
