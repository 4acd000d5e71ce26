"""A fixed-shape on-disk row store: N rows of one shape and dtype in one preallocated `.npy` file,
filled lazily, read back row by row, so a dataset larger than memory trains with a flat RSS.

Why not `ArrayCache`: an entry there is written whole, once, and read memory-mapped. A streamed
dataset is decoded a batch at a time by DataLoader workers, in whatever order the sampler asks;
each row is written as soon as it is decoded, and a later epoch (or run) reads it instead of
decoding the file again.

Layout, `root/rows/<key[:2]>/<key>/`:

- `rows.npy`: a standard `.npy` file of shape (N, *row_shape), created sparse (its size is set, no
  data written), so `np.load(..., mmap_mode="r")` can inspect it;
- `marks.bin`: 8 bytes per row, all zero until the row is filled: the row's CRC-32 and a magic
  number. A row is trusted only when its mark is present AND its bytes match the CRC, so a row
  written without its mark (a crash between the two writes), a mark persisted before its row (an
  OS crash: the page cache flushes in any order) or a torn write is simply decoded again;
- `meta.json`: N, the row shape and dtype, the header size; the folder is created in a private
  temporary folder and renamed into place, so a store is either whole or absent.

Concurrency: several workers, ranks and runs may fill the same store at once. Every row is written
with one `pwrite` at its own offset before its mark; two writers of one row write identical bytes
(the key covers every input of the decoding), so whoever wins, the row is right. Reads use
`os.preadv` into a fresh buffer (no growing memory map), so the pages stay in the kernel's page
cache, not in the process's resident set.

A store that cannot be written (read-only or full disk) still serves: rows are decoded on every
read and nothing is marked.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.data.cache import _KEY, _TMP

STORE_VERSION = 1  # bump when the layout changes: old stores are not opened
_MAGIC = 0x524F5731  # "ROW1"
_MARK = np.dtype([("crc", "<u4"), ("magic", "<u4")])


class RowStore:
    """N rows of `row_shape` and `dtype`, created on first use under `root/rows/`, filled lazily.

    Args:
        root: the cache folder (e.g. `data.cache.default_cache_dir()`).
        key: a hex digest of everything the rows depend on (`data.cache.cache_key`).
        n: number of rows.
        row_shape: the shape of one row.
        dtype: the rows' numpy dtype.

    Raises:
        OSError: the folder cannot be created (callers may serve without a store).
        ValueError: a bad key, or an existing store of another size, shape or dtype under `key`.
    """

    def __init__(self, root: str | Path, key: str, n: int, row_shape: tuple[int, ...], dtype: np.dtype | str) -> None:
        if not _KEY.fullmatch(key):
            raise ValueError(f"row store key {key!r} is not a lower-case hex digest (use cache_key)")
        self.n, self.row_shape, self.dtype = int(n), tuple(int(s) for s in row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.folder = Path(root) / "rows" / key[:2] / key
        if not (self.folder / "meta.json").is_file():
            self._create()
        meta = json.loads((self.folder / "meta.json").read_text())
        expected = {"version": STORE_VERSION, "n": self.n, "row_shape": list(self.row_shape), "dtype": self.dtype.str}
        if {k: meta.get(k) for k in expected} != expected:
            raise ValueError(f"{self.folder}: a row store of another layout ({meta}) has this key")
        self.offset = int(meta["offset"])
        self._fds: tuple[int, int, int] | None = None  # (pid, rows fd, marks fd): opened per process

    # ------------------------------------------------------------------ reading and writing

    def read(self, rows: np.ndarray | list[int], fill: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
        """Rows `rows` (in the order given) as a fresh (len(rows), *row_shape) array.

        A row not filled yet is made by `fill(i)`, written and marked; without `fill` it is
        a ValueError. Rows are read in ascending order (each distinct row once).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"row index out of range for a store of {self.n} rows")
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(unique), *self.row_shape), dtype=self.dtype)
        marks = self.marks(unique)
        for k, i in enumerate(unique.tolist()):
            if marks[k] is not None and self._read_row(i, out[k], marks[k]):
                continue
            if fill is None:
                raise ValueError(f"row {i} of {self.folder} is not filled")
            out[k] = fill(i)
            self.write(i, out[k])
        return out if len(unique) == len(rows) and np.array_equal(unique, rows) else out[inverse]

    def write(self, i: int, row: np.ndarray) -> bool:
        """Write row `i`, then its mark; False (nothing marked) when the disk refuses it."""
        data = np.ascontiguousarray(row, dtype=self.dtype)
        if data.nbytes != self.row_bytes:
            raise ValueError(f"row of {data.nbytes} bytes for a store of {self.row_bytes}-byte rows")
        mark = np.zeros(1, _MARK)
        mark["crc"], mark["magic"] = zlib.crc32(memoryview(data).cast("B")), _MAGIC
        try:
            _, rows_fd, marks_fd = self._open()
            _pwrite_all(rows_fd, memoryview(data).cast("B"), self.offset + i * self.row_bytes)
            _pwrite_all(marks_fd, mark.tobytes(), i * _MARK.itemsize)  # only after the row itself
        except OSError:
            return False
        return True

    def marks(self, rows: np.ndarray) -> list[int | None]:
        """Each row's stored CRC-32, or None where it is not marked."""
        _, _, marks_fd = self._open()
        out: list[int | None] = []
        for i in np.asarray(rows, dtype=np.int64).tolist():
            raw = os.pread(marks_fd, _MARK.itemsize, i * _MARK.itemsize)
            mark = np.frombuffer(raw, _MARK) if len(raw) == _MARK.itemsize else None
            out.append(int(mark["crc"][0]) if mark is not None and mark["magic"][0] == _MAGIC else None)
        return out

    def filled(self) -> np.ndarray:
        """A bool per row: marked (its bytes are checked when it is read)."""
        _, _, marks_fd = self._open()
        raw = _pread_all(marks_fd, self.n * _MARK.itemsize, 0)
        return np.frombuffer(raw, _MARK)["magic"] == _MAGIC

    def close(self) -> None:
        if self._fds is not None and self._fds[0] == os.getpid():
            os.close(self._fds[1])
            os.close(self._fds[2])
        self._fds = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None}  # descriptors are per process (spawned workers reopen)

    # ------------------------------------------------------------------ internals

    def _read_row(self, i: int, out: np.ndarray, crc: int) -> bool:
        _, rows_fd, _ = self._open()
        view = memoryview(out).cast("B")
        got = os.preadv(rows_fd, [view], self.offset + i * self.row_bytes)
        return got == self.row_bytes and zlib.crc32(view) == crc

    def _open(self) -> tuple[int, int, int]:
        """This process's descriptors (a forked DataLoader worker opens its own)."""
        if self._fds is None or self._fds[0] != os.getpid():
            flags = os.O_RDWR if os.access(self.folder / "rows.npy", os.W_OK) else os.O_RDONLY
            self._fds = (os.getpid(), os.open(self.folder / "rows.npy", flags),
                         os.open(self.folder / "marks.bin", flags))  # fmt: skip
        return self._fds

    def _create(self) -> None:
        """Make the store in a private folder and rename it into place (another process may win)."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.folder.parent / f"{_TMP}{self.folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            with open(tmp / "rows.npy", "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                          "shape": (self.n, *self.row_shape)}  # fmt: skip
                np.lib.format.write_array_header_1_0(f, header)
                offset = f.tell()
                f.truncate(offset + self.n * self.row_bytes)  # sparse: no data written
            with open(tmp / "marks.bin", "wb") as f:
                f.truncate(self.n * _MARK.itemsize)
            (tmp / "meta.json").write_text(json.dumps({
                "version": STORE_VERSION, "n": self.n, "row_shape": list(self.row_shape), "dtype": self.dtype.str,
                "offset": offset}))  # fmt: skip
            try:
                os.rename(tmp, self.folder)
            except OSError:
                if not (self.folder / "meta.json").is_file():
                    raise  # not "another process made it first"
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def index_rows(index: Any, n: int) -> tuple[np.ndarray, bool]:
    """What `rows[index]` asks of n rows, as (int64 row numbers, one row?): an int, a slice, a bool
    mask, or a tensor/array/list of indices (negative from the end)."""
    if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
        rows, single = np.array([int(index)]), True
    elif isinstance(index, slice):
        rows, single = np.arange(n)[index], False
    else:
        rows, single = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index), False
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
    rows = rows.astype(np.int64).reshape(-1)
    rows[rows < 0] += n
    return rows, single


class StoredRows:
    """A filled `RowStore` read like a tensor: `len`, `shape`, `ndim`, `dtype`, `rows[index]` (a
    fresh tensor), `split(size)`; `info` is what the writer recorded beside the rows (e.g. the
    value range). Every row must be filled: a missing or damaged one is a ValueError."""

    def __init__(self, store: RowStore, info: dict[str, Any] | None = None) -> None:
        self.store, self.info = store, info or {}
        self.shape = torch.Size((store.n, *store.row_shape))
        self.ndim = len(self.shape)
        self.dtype = torch.from_numpy(np.empty(0, store.dtype)).dtype

    def __len__(self) -> int:
        return self.store.n

    def __repr__(self) -> str:
        return f"StoredRows({tuple(self.shape)}, {self.dtype}, {self.store.folder})"

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows, single = index_rows(index, len(self))
        out = torch.from_numpy(self.store.read(rows))
        return out[0] if single else out

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive chunks of `size` rows, read one at a time (as `Tensor.split` gives them)."""
        for start in range(0, len(self), size):
            yield self[start:start + size]


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("short write")
        view, offset = view[written:], offset + written


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)
