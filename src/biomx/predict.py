"""Call a trained run's model on new inputs: one CSV row of probabilities per file or record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from biomx.modalities import get_pipeline
from biomx.runs import load_run_model, write_csv
from biomx.tasks import task_from_info


@torch.no_grad()
def predict_files(
    run_dir: str | Path, inputs: list[str | Path], output: str | Path | None = None,
    *, skip_errors: bool = False, batch_size: int = 256,
) -> dict[str, list]:
    """Predict class probabilities for new inputs with a run's best model.

    Args:
        run_dir: a finished (or interrupted) run directory.
        inputs: what the run's modality reads: image files and/or folders of images;
            FASTA / CSV files of sequences.
        output: CSV to write (atomically); None = only return the columns.
        skip_errors: leave out unreadable inputs (listed under "_failures") instead of failing.

    Returns:
        Columns: "path" (file or record id), "prob_<class>" for each class, "predicted",
        and "_failures": (input, reason) pairs.

    Raises:
        DataError: an unreadable input (unless skip_errors), a missing path.
    """
    model, info = load_run_model(run_dir)
    pre, task_info = info["preprocessing"], info["task"]
    pipeline = get_pipeline(pre["modality"])
    model = pipeline.inference_model(model, pre).eval()
    task = task_from_info(task_info)
    x, names, failures = pipeline.read_inputs(pre, inputs, skip_errors)
    probs = [task.predictions(model(batch)) for batch in x.split(batch_size)]
    probs_np = torch.cat(probs).numpy() if probs else np.zeros((0, task.out_dim)).squeeze(-1)
    columns: dict[str, list] = {"path": names}
    for name, values in task.prediction_columns(probs_np).items():
        columns[name] = [f"{v:.6f}" if isinstance(v, float) else v for v in values.tolist()]
    if output is not None:
        write_csv(Path(output), columns)
    columns["_failures"] = failures
    return columns
