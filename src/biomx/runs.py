"""The run directory: the complete record of one experiment.

    runs/<name>/
      config.yaml          resolved experiment config (what `--resume` and `evaluate` reread)
      run.json             model, task and preprocessing: enough to rebuild and call the model
      split.csv            every sample's id, label, split and sha256 (no patient ids)
      data.json            source hash, counts per split, skipped files
      checkpoints/         last.safetensors (resumable), best.safetensors (weights + run.json)
      metrics.jsonl        one line per epoch; tensorboard/ has the same as event files
      test_metrics.json    test metrics with bootstrap CIs
      predictions_test.csv per-sample test probabilities
      report.html          curves, the task's figures, the modality's explanations, config, environment
"""

from __future__ import annotations

import csv
import io
import json
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from biomx.engine.checkpoint import atomic_write_text, load_checkpoint
from biomx.errors import BiomxError, ConfigError
from biomx.models.registry import build_recorded


def new_run_dir(root: str | Path, name: str) -> Path:
    """A fresh directory `root/name-YYYYmmdd-HHMMSS` (suffixed if it already exists)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BiomxError(f"{path}: not found; is {path.parent} a biomx run directory?") from None
    except json.JSONDecodeError as err:
        raise BiomxError(f"{path}: corrupt JSON ({err})") from None


def write_csv(path: Path, columns: dict[str, list]) -> None:
    """Write equal-length columns as a CSV file, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    atomic_write_text(path, buffer.getvalue())


def environment(device: torch.device | str, world_size: int = 1) -> dict[str, str]:
    """Versions and hardware, for the report and the model card."""
    import monai
    import numpy

    import biomx

    env = {
        "biomx": biomx.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "processes": str(world_size),
        "cpu threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def find_checkpoint(run_dir: Path, which: str = "best") -> Path:
    path = run_dir / "checkpoints" / f"{which}.safetensors"
    if not path.is_file():
        fallback = run_dir / "checkpoints" / "last.safetensors"
        if which == "best" and fallback.is_file():
            return fallback
        raise BiomxError(f"{run_dir}: no checkpoint in {run_dir / 'checkpoints'}; was training started?")
    return path


def load_run_model(run_dir: str | Path, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a run's model from its checkpoint alone (the checkpoint carries run.json).

    Returns:
        (model in eval mode, run info dict with "model", "task", "preprocessing").

    Raises:
        BiomxError: no run or checkpoint, a corrupt checkpoint (its checksum does not match),
            or NaN/Inf weights (a diverged run, which would predict nonsense).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BiomxError(f"{run_dir}: run directory not found")
    path = find_checkpoint(run_dir, which)
    weights, extra = load_checkpoint(path)
    if not all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point() or w.is_complex()):
        raise BiomxError(f"{path}: the model's weights are not finite (NaN/Inf): the run diverged; "
                         "lower train.optimizer.lr and train again")  # fmt: skip
    info = extra.get("model_config") or {}
    if "model" not in info:
        raise BiomxError(f"{run_dir}: checkpoint has no model description; cannot rebuild the model")
    _check_plugins(path, info)
    try:
        model = build_recorded(info["model"])  # with a conversion it recorded (a DP run's GroupNorm)
        model.load_state_dict(weights)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except RuntimeError as err:  # weights of another shape than the recorded model arguments
        first = (str(err).strip().splitlines() or ["RuntimeError"])[0][:150]
        raise BiomxError(f"{path}: the weights do not fit the model it records ({first})") from None
    return model.eval(), info


def _check_plugins(path: Path, info: dict[str, Any]) -> None:
    """The modality and task a checkpoint names must be registered: the registry's one line,
    prefixed with the checkpoint it came from."""
    from biomx.modalities import get_modality
    from biomx.tasks import get_task

    try:
        modality = info.get("modality") or (info.get("preprocessing") or {}).get("modality")
        if modality is not None:
            get_modality(modality)
        task = info.get("task")
        if isinstance(task, dict) and task.get("name") is not None:  # older runs: no name, the kind
            get_task(task["name"])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def member_dirs(run_dir: Path, ensemble: int) -> list[Path]:
    """Where each model of a run keeps its checkpoints and logs: the run itself for one model,
    `members/<k>/` for each member of a deep ensemble."""
    return [run_dir] if ensemble == 1 else [run_dir / "members" / str(k) for k in range(ensemble)]


def load_run_models(run_dir: str | Path, which: str = "best") -> tuple[list[nn.Module], dict[str, Any]]:
    """Every model of a run: one, or each deep-ensemble member (`members/<k>/`), in eval mode."""
    run_dir = Path(run_dir)
    members = run_dir / "members"
    if not members.is_dir():
        model, info = load_run_model(run_dir, which)
        return [model], _settled_task(run_dir, info)
    dirs = sorted((d for d in members.iterdir() if d.name.isdigit()), key=lambda d: int(d.name))
    loaded = [load_run_model(d, which) for d in dirs if (d / "checkpoints").is_dir()]
    if not loaded:
        raise BiomxError(f"{run_dir}: no ensemble member has a checkpoint yet")
    return [model for model, _ in loaded], _settled_task(run_dir, loaded[0][1])


def _settled_task(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's run info with run.json's task entry, which the test evaluation may have settled
    after the checkpoints were written (a decision threshold chosen on the validation split)."""
    path = run_dir / "run.json"
    task = read_json(path).get("task") if path.is_file() else None
    same = isinstance(task, dict) and task.get("name") == (info.get("task") or {}).get("name")
    return {**info, "task": task} if same else info
