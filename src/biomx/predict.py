"""Call a trained run's model on new image files: one CSV row of probabilities per file."""

from __future__ import annotations

from pathlib import Path

import torch

from biomx.errors import DataError
from biomx.modalities.image import decode_images, is_image_file
from biomx.runs import load_run_model, write_csv
from biomx.tasks.classification import build_task


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and image files found under folders (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith(".") and is_image_file(p))
            if not found:
                raise DataError(f"{item}: folder holds no image files")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return files


@torch.no_grad()
def predict_files(
    run_dir: str | Path, inputs: list[str | Path], output: str | Path | None = None,
    *, skip_errors: bool = False, batch_size: int = 256,
) -> dict[str, list]:
    """Predict class probabilities for image files with a run's best model.

    Args:
        run_dir: a finished (or interrupted) run directory.
        inputs: image files and/or folders of images.
        output: CSV to write (atomically); None = only return the columns.
        skip_errors: leave out unreadable files (listed in the "error" output) instead of failing.

    Returns:
        Columns: "path", "prob_<class>" for each class, "predicted".

    Raises:
        DataError: an unreadable input (unless skip_errors), a missing path.
    """
    model, info = load_run_model(run_dir)
    pre, task_info = info["preprocessing"], info["task"]
    task = build_task(task_info["kind"], task_info["classes"], threshold=task_info["threshold"])
    files = collect_inputs(inputs)
    images, kept, failures = decode_images(
        files, size=tuple(pre["image_size"]), channels=pre["channels"], window=pre["window"],
        dicom_frames=pre["dicom_frames"], on_error="skip" if skip_errors else "raise",
    )  # fmt: skip
    probs = []
    for batch in images.split(batch_size):
        x = batch.float()
        if pre["mean"] is not None:
            x = (x - torch.tensor(pre["mean"]).view(1, -1, 1, 1)) / torch.tensor(pre["std"]).view(1, -1, 1, 1)
        probs.append(task.probabilities(model(x)))
    probs_np = torch.cat(probs).numpy() if probs else torch.zeros(0).numpy()
    columns: dict[str, list] = {"path": [str(files[i]) for i in kept]}
    for name, values in task.prediction_columns(probs_np).items():
        columns[name] = [f"{v:.6f}" if isinstance(v, float) else v for v in values.tolist()]
    if output is not None:
        write_csv(Path(output), columns)
    columns["_failures"] = failures
    return columns
