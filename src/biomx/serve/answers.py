"""The upload route's answer: per input its name, the task's prediction columns, its label, its
uncertainty (an ensemble's std) and an explanation image, all through the task's protocols."""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import numpy as np
from PIL import Image

from biomx.errors import BiomxError
from biomx.protocols import ExplainsInputs, LabellingTask, RowTask

log = logging.getLogger("biomx.serve")

MAX_EXPLAINED = 8  # explanations per request (each is a backward pass)


def rows_answer(task: Any, preds: np.ndarray, std: np.ndarray | None, names: list[str]) -> list[dict[str, Any]]:
    """One JSON-able dict per input."""
    rows: list[dict[str, Any]] = [{"name": name} for name in names]
    if not isinstance(task, RowTask):  # e.g. a label map: the raw task-space predictions
        for row, value in zip(rows, preds, strict=True):
            row["predictions"] = np.asarray(value, dtype=np.float64).tolist()
        if std is not None:
            for row, value in zip(rows, std, strict=True):
                row["uncertainty"] = np.asarray(value, dtype=np.float64).tolist()
        return rows
    for column, values in task.prediction_columns(preds).items():
        for row, value in zip(rows, values, strict=True):
            row[column] = _plain(value)
    if isinstance(task, LabellingTask):
        classes = np.asarray(task.classes, dtype=object)
        for row, label in zip(rows, np.asarray(task.predict_labels(preds)), strict=True):
            row["label"] = classes[label == 1].tolist() if np.ndim(label) else str(classes[int(label)])
    if std is not None:
        flat = np.asarray(std, dtype=np.float64).reshape(len(std), -1)
        columns = [f"{task.output_prefix}_{name}_std" for name in task.output_names()]
        for row, values in zip(rows, flat, strict=True):
            row["uncertainty"] = dict(zip(columns, values.tolist(), strict=True))
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def explanations(loaded: Any, raw: Any) -> list[str | None]:
    """A base64 PNG per input (the first `MAX_EXPLAINED`), or [] when the modality explains none.
    Runs in the engine's thread (a backward pass through the PyTorch members)."""
    modality = loaded.modality
    if not isinstance(modality, ExplainsInputs):
        return []
    model_name = (loaded.info.get("model") or {}).get("name", "")
    try:
        images = modality.explain_inputs(loaded.graph.members[0], loaded.task, loaded.info["preprocessing"],
                                         raw[:MAX_EXPLAINED], model_name)  # fmt: skip
    except BiomxError as e:  # this model has nothing to explain with (e.g. no CAM layer): predict anyway
        log.info("explanation skipped: %s", type(e).__name__)
        return []
    except Exception as e:  # a bug in an explainer must not cost the client its prediction
        log.warning("explanation failed: %s (a bug; the prediction is answered without it)", type(e).__name__)
        return []
    return [png_base64(image) for image in images]


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
