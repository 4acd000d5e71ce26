"""The drift log of a server (`biomx serve RUN --drift-log FILE`): for every engine call, one JSON
line with the model's name, the time, the modality's input statistics of each row and the model's
predictions of each row: what `biomx drift RUN --from-log FILE` compares with the run's training
data. No inputs are kept, only these summaries (the embedding test needs the inputs: it is not run
from a log).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.errors import BiomxError
from biomx.export.graph import LoadedGraph
from biomx.protocols import DriftStatistics


def _plain(values: np.ndarray) -> list:
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating):
        return [None if not np.isfinite(v) else float(v) for v in values.tolist()]
    return values.tolist()


class DriftLog:
    """Appends one JSON line per engine call; safe from several engine threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise BiomxError(f"--drift-log {self.path}: is a folder; name a file (JSON lines are appended)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def record(self, model: str, loaded: LoadedGraph, rows: Any, predictions: np.ndarray) -> None:
        """The summaries of one engine call's rows (raw graph inputs) and predictions."""
        stats: dict[str, list] = {}
        if isinstance(loaded.modality, DriftStatistics):
            raw = torch.as_tensor(np.asarray(rows))
            stats = {k: _plain(v) for k, v in loaded.modality.input_statistics(loaded.info["preprocessing"], raw).items()}
        preds = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
        line = json.dumps({"model": model, "time": time.time(), "rows": len(preds), "statistics": stats,
                           "predictions": [_plain(p) for p in preds]})  # fmt: skip
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def read_log(path: str | Path, model: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A model's rows in a drift log: (statistic -> values, predictions (N, k)).

    Raises:
        BiomxError: no such file, a line that is not JSON, no rows of this model.
    """
    path = Path(path)
    if not path.is_file():
        raise BiomxError(f"{path}: no such drift log (write one with biomx serve RUN --drift-log FILE)")
    stats: dict[str, list] = {}
    preds: list[list] = []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except ValueError:
                raise BiomxError(f"{path}:{number}: not a JSON line of a drift log") from None
            if entry.get("model") != model:
                continue
            for name, values in entry.get("statistics", {}).items():
                stats.setdefault(name, []).extend(values)
            preds.extend(entry.get("predictions", []))
    if not preds:
        raise BiomxError(f"{path}: no rows of model {model!r} (the run folder's name) in this drift log")
    as_array = {k: np.array([np.nan if v is None else v for v in values]) for k, values in stats.items()}
    return as_array, np.array(preds, dtype=np.float64)
