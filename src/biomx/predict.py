"""Call a trained run's model(s) on new inputs: one CSV row of predictions per file or record.

A deep ensemble averages its members; with MC dropout each member also averages several
dropout passes. Either way every prediction column gets a `<column>_std` partner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.engine.trainer import enable_dropout
from biomx.evaluation import std_columns
from biomx.modalities import get_pipeline
from biomx.runs import load_run_models, write_csv
from biomx.tasks import task_from_info
from biomx.uncertainty import mean_and_std


def _batches(x: Any, batch_size: int):
    """A stacked tensor is split; a dataset with `__getitems__` (molecules) is fetched in chunks."""
    if isinstance(x, torch.Tensor):
        yield from x.split(batch_size)
        return
    for start in range(0, len(x), batch_size):
        yield x.__getitems__(list(range(start, min(start + batch_size, len(x)))))[0]


@torch.no_grad()
def predict_files(
    run_dir: str | Path, inputs: list[str | Path], output: str | Path | None = None,
    *, skip_errors: bool = False, batch_size: int = 256, mc_dropout: int | None = None,
    masks_dir: str | Path | None = None,
) -> dict[str, list]:
    """Predict with a run's best model (or ensemble) on new inputs.

    Args:
        run_dir: a finished (or interrupted) run directory.
        inputs: what the run's modality reads: image files and/or folders of images;
            FASTA / CSV files of sequences; CSV / SDF / .smi files of molecules.
        output: CSV to write (atomically); None = only return the columns.
        skip_errors: leave out unreadable inputs (listed under "_failures") instead of failing.
        mc_dropout: Monte Carlo dropout passes per model (None: as the run was evaluated).
        masks_dir: segmentation runs: where masks go (default: `<output stem>_masks/` beside
            `output`, else `masks/`); one mask per scan, on the scan's own grid.

    Returns:
        Columns: "path" (file or record id), "prob_<class>" per class and "predicted"
        (classification) or "pred_<target>" (regression), "<column>_std" when there are
        several passes, and "_failures": (input, reason) pairs.

    Raises:
        DataError: an unreadable input (unless skip_errors), a missing path.
    """
    models, info = load_run_models(run_dir)
    pre, task_info = info["preprocessing"], info["task"]
    if task_info["kind"] == "segmentation":
        from biomx.tasks.segmentation.pipeline import predict_masks

        if masks_dir is None:
            masks_dir = Path(output).with_name(Path(output).stem + "_masks") if output else Path("masks")
        columns = predict_masks(models, info, inputs, masks_dir, skip_errors)
        if output is not None:
            write_csv(Path(output), {k: v for k, v in columns.items() if k != "_failures"})
        return columns
    passes_per_model = (info.get("uncertainty", {}).get("mc_dropout", 0) if mc_dropout is None else mc_dropout)
    pipeline = get_pipeline(pre["modality"])
    task = task_from_info(task_info)
    x, names, failures = pipeline.read_inputs(pre, inputs, skip_errors)
    passes = []
    for model in models:
        model = pipeline.inference_model(model, pre).eval()
        for k in range(max(passes_per_model, 1)):
            if passes_per_model > 0:
                torch.manual_seed(k)  # reproducible dropout masks
                enable_dropout(model)
            preds = [task.predictions(model(batch)) for batch in _batches(x, batch_size)]
            passes.append(torch.cat(preds).numpy() if preds else np.zeros((0, task.out_dim)).squeeze(-1))
    probs, std = mean_and_std(passes)
    columns: dict[str, list] = {"path": names}
    for name, values in task.prediction_columns(probs).items():
        columns[name] = [f"{v:.6f}" if isinstance(v, float) else v for v in values.tolist()]
    if std is not None:
        columns.update(std_columns(task, std))
    if output is not None:
        write_csv(Path(output), columns)
    columns["_failures"] = failures
    return columns
