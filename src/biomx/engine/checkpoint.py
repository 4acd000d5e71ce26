"""Checkpoints as single safetensors files, written atomically.

A checkpoint holds the model weights, the optimizer's tensors and the RNG state as
tensors, and everything else (epoch, step, scheduler, history, model config) as JSON in
the file's metadata. No pickle anywhere, so a checkpoint from a stranger cannot run code.
One file means the weights and the training state can never disagree after a crash:
the file is written to a temporary name (`.<name>.biomx-tmp-<pid>`, removed by the next write
of the same file if the writer was killed), flushed, and renamed over the old one. The
metadata also holds a SHA-256 of the tensors, checked on load, so flipped bytes are refused
rather than silently predicting garbage.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from biomx.errors import OS_ADVICE, BiomxError

_TMP_MARK = ".biomx-tmp-"
_STARTED = time.time()  # a temp file of this pid older than this is left from another process
_scanned: dict[str, tuple[int, set[str]]] = {}  # folder -> (its mtime when listed, temp files in it)

_KINDS = [(stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe (FIFO)"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")]  # fmt: skip
# the write errors a user can fix: permissions, read-only file system, disk full, file too large
_ADVICE = {code: OS_ADVICE[code] for code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)}


def check_target(path: Path) -> None:
    """Refuse to replace anything but a regular file; make a missing parent folder.

    Raises:
        BiomxError: `path` is a symlink, folder, FIFO, device or socket, or its folder cannot be made.
    """
    try:
        mode = os.lstat(path).st_mode  # lstat: a symlink is refused, never followed
    except FileNotFoundError:
        _make_parent(path)
        return
    except NotADirectoryError:
        _make_parent(path)  # raises: a file where a folder should be
        return
    except OSError as err:
        raise _write_error(path, err) from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise BiomxError(f"{path}: exists and is not a regular file (a {kind}); choose another output path")


def _make_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        raise BiomxError(f"{path}: cannot write: {blocker} is not a folder; choose another output path") from None
    except OSError as err:
        raise _write_error(path, err) from None


def _write_error(path: Path, err: OSError) -> BaseException:
    """One line for a write the user can fix (permissions, read-only, disk full); else the error."""
    if err.errno in _ADVICE:
        return BiomxError(f"{path}: cannot write ({_ADVICE[err.errno]})")
    return err


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: another user's live process
        return True
    return True


def _clean_stale(path: Path) -> None:
    """Remove temp files of `path` left by a write that was killed (its pid is gone, or it is ours
    from before this process started). A folder is listed again only when it changed since this
    process last listed or wrote it, so writing many files into one folder stays linear."""
    folder = str(path.parent)
    try:
        changed = os.stat(folder).st_mtime_ns
    except OSError:
        return
    if _scanned.get(folder, (None,))[0] != changed:
        try:
            names = {e.name for e in os.scandir(folder) if _TMP_MARK in e.name and e.name.startswith(".")}
        except OSError:
            names = set()
        _scanned[folder] = (changed, names)
    prefix = f".{path.name}{_TMP_MARK}"
    for name in [n for n in _scanned[folder][1] if n.startswith(prefix)]:
        pid_text = name[len(prefix):].split("-")[0]
        if not pid_text.isdigit():
            continue
        tmp = path.parent / name
        try:
            mtime = os.lstat(tmp).st_mtime
        except FileNotFoundError:
            _scanned[folder][1].discard(name)
            continue
        except OSError:
            continue
        pid = int(pid_text)
        if not _pid_alive(pid) or (pid == os.getpid() and mtime < _STARTED):
            with contextlib.suppress(OSError):
                tmp.unlink()
            _scanned[folder][1].discard(name)


def _wrote_in(folder: Path) -> None:
    """Our own write changed the folder's mtime: no need to list it again for that."""
    key = str(folder)
    if key in _scanned:
        with contextlib.suppress(OSError):
            _scanned[key] = (os.stat(key).st_mtime_ns, _scanned[key][1])


def _open_temp(path: Path) -> tuple[int, Path]:
    """`.<name>.biomx-tmp-<pid>` beside `path` (same filesystem, so os.replace is atomic), created
    with the mode of any new file (0666 minus the umask)."""
    tmp = path.parent / f".{path.name}{_TMP_MARK}{os.getpid()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(tmp, flags, 0o666), tmp
    except FileExistsError:  # another thread of this process writes the same file
        tmp = tmp.with_name(f"{tmp.name}-{secrets.token_hex(4)}")
        return os.open(tmp, flags, 0o666), tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never half.

    Only a regular file or a new path is written: a symlink, folder, FIFO, device or socket
    at `path` is refused and left as it is.

    Raises:
        BiomxError: `path` is not a regular file, its folder cannot be made, or the write fails
            for a reason the user can fix (permissions, read-only file system, disk full); the
            temp file is removed and the previous file is intact.
    """
    path = Path(path)
    check_target(path)
    _clean_stale(path)
    tmp = None
    try:
        fd, tmp = _open_temp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check_target(path)  # again: something may have appeared there while we wrote
        os.replace(tmp, path)
        _wrote_in(path.parent)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if err.errno in _ADVICE:
            raise _write_error(path, err) from None
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in key order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


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


_CHECKSUM = "biomx_sha256"  # metadata key: `_digest` of the file's tensors


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    """Save model weights (under `model.`) plus any nested state `extra` in one file.

    Args:
        path: destination `.safetensors` file (written atomically).
        model_state: the model's `state_dict()`.
        extra: JSON-able values and tensors, arbitrarily nested (optimizer state, RNG, ...).
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    skeleton = _flatten("state", extra, tensors)
    metadata = {"biomx": json.dumps(skeleton), _CHECKSUM: _digest(tensors)}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4,
             "F16": 2, "BF16": 2, "I16": 2, "U16": 2}  # anything else (U8, I8, BOOL, F8_*): 1 byte
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def _check_header(path: Path) -> None:
    """Refuse a file whose safetensors header asks for more tensor bytes than the file holds (a
    truncated file, or a forged shape that would allocate gigabytes) before anything is allocated."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            start = f.read(8)
            length = int.from_bytes(start, "little")
            if len(start) < 8 or not 0 < length <= min(size - 8, _MAX_HEADER):
                claim = f"a {length}-byte header" if len(start) == 8 else "no header"
                raise BiomxError(f"{path}: not a readable biomx checkpoint (its header is corrupt: claims {claim} "
                                 f"in a file of {size} bytes); restore it from a copy or train again")  # fmt: skip
            header = json.loads(f.read(length))
    except OSError as err:
        raise BiomxError(f"{path}: not a readable biomx checkpoint ({err})") from None
    except (ValueError, UnicodeDecodeError):  # not JSON: let safetensors name the problem
        return
    if not isinstance(header, dict):
        return
    claimed = 0
    for key, entry in header.items():
        if key == "__metadata__" or not isinstance(entry, dict):
            continue
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if isinstance(shape, list) and all(isinstance(n, int) for n in shape):
            n = _ITEMSIZE.get(entry.get("dtype"), 1)
            for dim in shape:
                n *= max(dim, 0)
            claimed = max(claimed, n)
        if isinstance(offsets, list) and all(isinstance(n, int) for n in offsets):
            claimed = max(claimed, *offsets, 0)
    if claimed > size - 8 - length:
        raise BiomxError(f"{path}: not a readable biomx checkpoint (its header is corrupt: claims {claimed} bytes "
                         f"of tensors; the file has {size - 8 - length} after its header); it is truncated or "
                         "damaged: restore it from a copy or train again")  # fmt: skip


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of `save_checkpoint`: (model_state, extra).

    Raises:
        BiomxError: the file is missing, truncated or not a biomx checkpoint, or its header
            claims more tensor bytes than the file holds.
    """
    if not path.is_file():
        raise BiomxError(f"{path}: checkpoint not found")
    _check_header(path)
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        skeleton = json.loads(metadata["biomx"])
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as err:
        raise BiomxError(f"{path}: not a readable biomx checkpoint ({err})") from None
    expected = metadata.get(_CHECKSUM)  # None: written before checksums; nothing to check
    if expected is not None and _digest(tensors) != expected:
        raise BiomxError(f"{path}: checkpoint is corrupt (tensor data does not match its checksum); "
                         "it changed after it was written: restore it from a copy or train again")  # fmt: skip
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return model_state, _unflatten(skeleton, tensors)
