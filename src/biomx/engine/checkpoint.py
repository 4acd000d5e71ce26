"""Checkpoints as single safetensors files, written atomically.

A checkpoint holds the model weights, the optimizer's tensors and the RNG state as
tensors, and everything else (epoch, step, scheduler, history, model config) as JSON in
the file's metadata. No pickle anywhere, so a checkpoint from a stranger cannot run code.
One file means the weights and the training state can never disagree after a crash:
the file is written to a temporary name, flushed, and renamed over the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from biomx.errors import BiomxError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, str]:
    """A temporary file in `path`'s folder (same filesystem, so os.replace is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should be readable like any file
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half."""
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _flatten(prefix: str, obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor in a nested state dict into `tensors`; return the JSON skeleton."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(f"{prefix}.{k}", v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    # Optimizer state dicts key parameters by int; JSON objects only allow strings.
    return {"__int__": k} if isinstance(k, int) else k


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        out = {}
        for k, v in skeleton["__dict__"]:
            key = k["__int__"] if isinstance(k, dict) else k
            out[key] = _unflatten(v, tensors)
        return out
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    """Save model weights (under `model.`) plus any nested state `extra` in one file.

    Args:
        path: destination `.safetensors` file (written atomically).
        model_state: the model's `state_dict()`.
        extra: JSON-able values and tensors, arbitrarily nested (optimizer state, RNG, ...).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    skeleton = _flatten("state", extra, tensors)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"biomx": json.dumps(skeleton)})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of `save_checkpoint`: (model_state, extra).

    Raises:
        BiomxError: the file is missing, truncated or not a biomx checkpoint.
    """
    if not path.is_file():
        raise BiomxError(f"{path}: checkpoint not found")
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        skeleton = json.loads(metadata["biomx"])
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as err:
        raise BiomxError(f"{path}: not a readable biomx checkpoint ({err})") from None
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return model_state, _unflatten(skeleton, tensors)
