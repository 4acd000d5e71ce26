"""Call a trained run's model(s) on new inputs: one CSV row of predictions per file or record.

The run's modality reads the inputs and its task turns model outputs into columns (see
`biomx.batched.predict`): a deep ensemble averages its members; with MC dropout each member
also averages several dropout passes, and every prediction column gets a `<column>_std` partner.
"""

from __future__ import annotations

from pathlib import Path

import torch

from biomx.engine import distributed as dist
from biomx.engine.checkpoint import check_target
from biomx.errors import BiomxError
from biomx.export.engines import open_engine
from biomx.modalities import get_modality
from biomx.protocols import PredictRequest, RowTask
from biomx.runs import load_run_models, read_json, write_csv
from biomx.tasks import task_from_info


@torch.no_grad()
def predict_files(
    run_dir: str | Path, inputs: list[str | Path], output: str | Path | None = None,
    *, skip_errors: bool = False, batch_size: int = 256, mc_dropout: int | None = None,
    masks_dir: str | Path | None = None, engine: str = "torch",
) -> dict[str, list]:
    """Predict with a run's best model (or ensemble) on new inputs.

    Args:
        run_dir: a finished (or interrupted) run directory.
        inputs: files or folders the run's modality reads (see its `input_help`, or
            `biomx predict --help`).
        output: CSV to write (atomically); None = only return the columns.
        skip_errors: leave out unreadable inputs (listed under "_failures") instead of failing.
        mc_dropout: Monte Carlo dropout passes per model (None: as the run was evaluated).
        masks_dir: where a task that writes a file per input puts them (segmentation masks;
            default: `<output stem>_masks/` beside `output`, else `masks/`).
        engine: "torch" (the run's models), or "onnx" / "int8": the run's export
            (`biomx export`) in ONNX Runtime, fed the modality's raw inputs.

    Returns:
        Columns: "path" (file or record id), then the task's columns ("prob_<class>" per class
        and "predicted"; "pred_<target>"; a mask file and class volumes), "<column>_std" when
        there are several passes, and "_failures": (input, reason) pairs.

    Raises:
        DataError: an unreadable input (unless skip_errors), a missing path.
    """
    if output is not None:
        check_target(Path(output))  # refuse a symlink, folder, FIFO... before the work, not after
    dist.init_for_inference()  # under torchrun: each rank predicts its share, rank 0 writes the merged file
    runner = None
    if engine == "torch":
        models, info = load_run_models(run_dir)
    else:  # the exported graph: its members are what the engine was exported from
        check_engine_task(Path(run_dir), engine)
        runner = open_engine(run_dir, engine)
        models, info = list(runner.loaded.graph.members), runner.loaded.info
    # Runs written before run.json named its modality kept it in the preprocessing record.
    modality = get_modality(info.get("modality") or info["preprocessing"]["modality"])
    task = task_from_info(info["task"])
    if dist.world_size() > 1 and not isinstance(task, RowTask):
        raise BiomxError(f"torchrun: `biomx predict` shares out the rows of tasks with one row per input; a "
                         f"{task.kind} run predicts in one process (run it without torchrun)")  # fmt: skip
    request = PredictRequest(models, info, modality, list(inputs), output=Path(output) if output else None,
                             skip_errors=skip_errors, batch_size=batch_size, mc_dropout=mc_dropout,
                             files_dir=Path(masks_dir) if masks_dir else None, run_dir=Path(run_dir),
                             engine=runner)  # fmt: skip
    columns = task.predict(request)
    if output is not None and dist.is_main():
        write_csv(Path(output), columns)
    columns["_failures"] = request.failures
    return columns


def check_engine_task(run_dir: Path, engine: str) -> None:
    """Refuse an export engine for a task without one prediction row per input (masks predicted
    window by window, survival curves), before asking for an export that cannot be made."""
    path = run_dir / "run.json"
    if not path.is_file():
        return  # opening the engine says what is missing
    task = task_from_info(read_json(path)["task"])
    if not isinstance(task, RowTask):
        raise BiomxError(f"--engine {engine}: a {task.kind} run predicts with its PyTorch models only (it "
                         "cannot be exported); use --engine torch")  # fmt: skip
