"""The on-disk preprocessing cache: arrays computed once (featurised molecules, resampled
volumes, ...) and memory-mapped on every later run.

An entry is a folder `root/<key[:2]>/<key>/` of `.npy` files plus `meta.json` (which arrays,
their shapes and dtypes, and a small user dict). The key is a hex digest of everything the
arrays depend on (`cache_key`), so a changed input or setting is simply a different entry and
nothing is ever invalidated in place.

Several processes (DataLoader workers, distributed ranks, two runs) may read and write the same
entry: a writer fills a private `.tmp-*` folder, fsyncs it and renames it into place in one
step, so a reader sees a whole entry or none. An interrupted write leaves only a `.tmp-*`
folder, which readers ignore and `clean` removes. Arrays are stored without pickle and read
with `allow_pickle=False`: a cache folder can never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from biomx.data.samples import sha256_file

# CPython 3.11 before 3.11.8 can fail compile() run from two threads at once ("SystemError: AST
# constructor recursion depth mismatch"); np.load parses every .npy header with ast.literal_eval,
# and cases are loaded from a thread pool. Opening a memory map is quick: one lock costs nothing.
_HEADER_LOCK = threading.Lock()

FORMAT_VERSION = 1  # bump when the entry layout changes: old entries become misses
_KEY = re.compile(r"[0-9a-f]{16,128}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TMP = ".tmp-"


def cache_key(*parts: Any) -> str:
    """A sha256 hex key over `parts`: bytes, str, or JSON-able settings (dict keys sorted).

    Each part is tagged with its type and length, so ("ab", "c") and ("a", "bc") differ.
    """
    digest = hashlib.sha256(f"biomx-cache-v{FORMAT_VERSION}".encode())
    for part in parts:
        if isinstance(part, bytes):
            tag, data = b"b", part
        elif isinstance(part, str):
            tag, data = b"s", part.encode()
        else:
            tag, data = b"j", json.dumps(part, sort_keys=True, separators=(",", ":")).encode()
        digest.update(tag + len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (so a renamed or touched file keeps its cache entries)."""
    return sha256_file(path)


def default_cache_dir() -> Path:
    """`$BIOMX_CACHE` if set, else `~/.cache/biomx`."""
    env = os.environ.get("BIOMX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "biomx"


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (no-op where a folder cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    for name, array in arrays.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"cache array name {name!r}: use letters, digits and underscores")
        if not isinstance(array, np.ndarray):
            raise TypeError(f"cache array {name!r} is a {type(array).__name__}, not a numpy array")
        if array.dtype.hasobject or array.dtype.kind in "OUS":
            raise TypeError(f"cache array {name!r} has dtype {array.dtype}: only numeric arrays "
                            "are cached (no objects or strings)")


class ArrayCache:
    """A folder of cache entries, each a dict of numpy arrays (read back memory-mapped)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise ValueError(f"cache key {key!r} is not a lower-case hex digest (use cache_key)")
        return self.root / key[:2] / key

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The entry's arrays, memory-mapped read-only; None for a missing or corrupt entry
        (a corrupt one is removed, so the caller recomputes and puts it again)."""
        entry = self.path(key)
        if not entry.is_dir():
            return None
        try:
            return self._load(entry)
        except (OSError, ValueError, KeyError, TypeError):
            self._remove(entry)
            return None

    def get_meta(self, key: str) -> dict[str, Any] | None:
        """The small JSON dict stored with the entry by `put`, or None when there is no entry."""
        try:
            return json.loads((self.path(key) / "meta.json").read_text())["meta"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, arrays: dict[str, np.ndarray],
            meta: dict[str, Any] | None = None) -> Path:
        """Write an entry atomically; if another process already wrote it, keep theirs.

        Returns:
            The entry's folder.

        Raises:
            TypeError / ValueError: an object or string array, a bad array name or key.
            OSError: the cache folder is not writable (callers may treat the cache as optional).
        """
        entry = self.path(key)
        _check_arrays(arrays)
        if entry.is_dir() and self.get(key) is not None:
            return entry
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.parent / f"{_TMP}{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            index = {}
            for name, array in arrays.items():
                with open(tmp / f"{name}.npy", "wb") as f:
                    np.save(f, np.ascontiguousarray(array), allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                index[name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
            with open(tmp / "meta.json", "w") as f:
                json.dump({"version": FORMAT_VERSION, "arrays": index, "meta": meta or {}}, f)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            self._publish(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return entry

    def clean(self, older_than_s: float = 3600.0) -> int:
        """Remove leftovers of interrupted writes older than `older_than_s`; returns how many.
        (Younger ones may belong to a write still in progress.)"""
        removed, now = 0, time.time()
        for tmp in self.root.glob(f"*/{_TMP}*"):
            try:
                if now - tmp.stat().st_mtime >= older_than_s:
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
            except OSError:
                continue
        return removed

    # ------------------------------------------------------------------ internals

    def _load(self, entry: Path) -> dict[str, np.ndarray]:
        info = json.loads((entry / "meta.json").read_text())
        if info["version"] != FORMAT_VERSION:
            raise ValueError("old cache format")
        arrays = {}
        for name, spec in info["arrays"].items():
            with _HEADER_LOCK:  # np.load parses the header with ast.literal_eval (see _HEADER_LOCK)
                array = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if array.dtype.str != spec["dtype"] or list(array.shape) != spec["shape"]:
                raise ValueError(f"{name}.npy does not match meta.json")
            arrays[name] = array
        return arrays

    def _publish(self, tmp: Path, entry: Path) -> None:
        """Rename tmp into place; when an entry is already there, keep it if it is whole,
        else replace it (once)."""
        for _ in range(2):
            try:
                os.rename(tmp, entry)
                _fsync_dir(entry.parent)
                return
            except OSError:
                if not entry.exists():
                    raise
                if self.get(entry.name) is not None:
                    return  # another process won the race with a whole entry: keep theirs
                # get() removed the corrupt entry; try the rename again

    def _remove(self, entry: Path) -> None:
        """Move a corrupt entry out of the way first, so no reader sees it half-deleted."""
        dead = entry.parent / f"{_TMP}dead-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, dead)
        except OSError:
            return  # already removed (or replaced) by another process
        shutil.rmtree(dead, ignore_errors=True)
