"""Image files decoded lazily, row by row, through the on-disk row store (`data.image.storage: stream`).

`StreamedImages` stands where the in-memory path holds one (N, C, H, W) float16 tensor: it has
`len`, `shape`, `ndim`, `dtype`, and `images[index]` returns the float16 rows of a tensor of
indices (or one row for an int). A row is decoded exactly as `decode.decode_images` decodes it
(`read_image`, `resize_image`, float16), the first time anyone asks for it, in whichever process
asks (DataLoader workers with `train.num_workers` > 0), then written to the row store, so later
epochs and later runs read it back. The datasets (`ImageTensorDataset`) index it like the tensor:
batches, augmentations and trained weights are the same as with `storage: memory`.

Store key: the files' content hashes (in source order) and every decoding setting, the same key
the in-memory cache uses; split.csv keeps the hashes anyway (`biomx evaluate` and resumes check
them), so hashing every file up front is kept; it runs in a thread pool (`file_hashes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.data.cache import cache_key, default_cache_dir
from biomx.data.row_store import RowStore, index_rows
from biomx.data.samples import sha256_file
from biomx.errors import DataError
from biomx.modalities.image.decode import read_image, read_image_bytes, resize_image

STREAM_VERSION = "image-rows-v1"  # bump when decoding or resizing changes (as IMAGE_CACHE_VERSION)
AUTO_STREAM_BYTES = 2 << 30  # storage auto: stream when the decoded images would take more (2 GiB)


def file_hashes(paths: list[Path], threads: int = 0) -> list[str | None]:
    """sha256 per file, in a thread pool (hashlib and reads release the GIL); None for a file
    that cannot be opened (decoding then reports it)."""

    def one(path: Path) -> str | None:
        try:
            return sha256_file(path)
        except OSError:
            return None

    def block(start: int) -> list[str | None]:
        return [one(p) for p in paths[start:start + 256]]

    n = threads or min(8, 2 * (os.cpu_count() or 1))
    if n <= 1 or len(paths) < 512:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(n) as pool:  # blocks of 256 files: one future each, not one per file
        return [h for hashes in pool.map(block, range(0, len(paths), 256)) for h in hashes]


class StreamDecodeError(DataError):
    """A file that failed to decode inside a DataLoader worker. torch re-raises a worker's exception
    as `type(message with the worker's traceback)`; this class keeps only the original line, so the
    command line still prints one line naming the file."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class Decoding:
    """How a file becomes a row (the `data.image` settings that `decode_images` takes)."""

    size: tuple[int, int]
    channels: int
    window: tuple[float, float] | None
    dicom_frames: str
    nan_policy: str
    max_pixels: int | None

    def decode(self, path: str) -> np.ndarray:
        return self._row(read_image, path)

    def decode_bytes(self, data: bytes, ext: str, name: str) -> np.ndarray:
        """A packed file's bytes (a shard member, format from `ext`) decoded as `decode` decodes a file."""
        return self._row(read_image_bytes, data, ext, name)

    def _row(self, read: Callable[..., np.ndarray], *source: Any) -> np.ndarray:
        try:
            image = read(*source, channels=self.channels, window=self.window, dicom_frames=self.dicom_frames,
                         nan_policy=self.nan_policy, max_pixels=self.max_pixels)  # fmt: skip
        except DataError as e:
            raise StreamDecodeError(str(e)) from None
        return resize_image(image, self.size).to(torch.float16).numpy()


class StreamedImages:
    """N images read on demand: `images[index]` decodes (once, into the row store) or reads rows.

    Args:
        paths: the image files, one per row.
        decoding: how each file is decoded.
        store: the row store keeping decoded rows; None decodes on every read (`image.cache: false`).
    """

    dtype = torch.float16
    ndim = 4

    def __init__(self, paths: list[str], decoding: Decoding, store: RowStore | None) -> None:
        self.paths, self.decoding, self.store = paths, decoding, store
        self.shape = torch.Size((len(paths), decoding.channels, *decoding.size))

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"StreamedImages({len(self)} files, rows {tuple(self.shape[1:])}, store {self.store and self.store.folder})"

    def __getitem__(self, index: Any) -> torch.Tensor:
        """float16 rows: (C, H, W) for an int, (k, C, H, W) for a slice or a tensor/array/list of indices."""
        rows, single = index_rows(index, len(self))
        out = self._rows(rows)
        return out[0] if single else out

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive chunks of `size` rows, read one at a time (as `Tensor.split` gives them)."""
        for start in range(0, len(self), size):
            yield self[start:start + size]

    def fill(self, rows: np.ndarray | None = None, threads: int = 0) -> None:
        """Decode the rows not yet in the store (default: all) in a thread pool; used to warm
        the store before a benchmark and for the normalisation sample."""
        if self.store is None:
            return
        rows = np.arange(len(self)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
        marked = self.store.filled()[rows]
        missing = rows[~marked]
        n = threads or min(8, os.cpu_count() or 1)
        chunks = np.array_split(missing, max(1, min(len(missing) // 64, 4 * n))) if len(missing) else []
        if n <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                self._rows(chunk)
            return
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(self._rows, chunks))

    def decode_row(self, i: int) -> np.ndarray:
        """Row i decoded from its source (a file here; a shard member in `ShardImages`)."""
        return self.decoding.decode(self.paths[i])

    def _rows(self, rows: np.ndarray) -> torch.Tensor:
        if self.store is None:
            out = np.stack([self.decode_row(i) for i in rows.tolist()]) if len(rows) else \
                np.empty((0, *self.shape[1:]), np.float16)  # fmt: skip
        else:
            out = self.store.read(rows, self.decode_row)
        return torch.from_numpy(out)


def streamed_images(paths: list[Path], hashes: list[str | None], settings: dict[str, Any], decoding: Decoding,
                    use_cache: bool) -> StreamedImages:  # fmt: skip
    """`StreamedImages` over `paths`, with its row store keyed by the files' content and `settings`.

    Raises:
        DataError: a file that cannot be opened (its hash is None), named.
    """
    for path, digest in zip(paths, hashes, strict=True):
        if digest is None:
            raise DataError(f"{path}: cannot read image: the file cannot be opened")
    return StreamedImages([str(p) for p in paths], decoding, open_store(hashes, settings, decoding, use_cache))


def open_store(hashes: list[Any], settings: dict[str, Any], decoding: Decoding, use_cache: bool) -> RowStore | None:
    """The row store for images with these content hashes (in row order) and settings; None
    without `image.cache` or when the cache folder cannot be written (every read decodes)."""
    if not use_cache:
        return None
    key = cache_key(STREAM_VERSION, hashes, settings)
    try:
        return RowStore(default_cache_dir(), key, len(hashes), (decoding.channels, *decoding.size), np.float16)
    except OSError:
        return None


def decoded_bytes(n: int, size: tuple[int, int], channels: int) -> int:
    """What `storage: memory` would hold: float16 rows."""
    return n * channels * size[0] * size[1] * 2


def content_digests(images: Any, hashes: list[str] | None) -> list[str] | None:
    """The duplicate check's per-sample content key for streamed images: each file's sha256
    (identical files decode to identical rows; reading every row back to hash it would decode the
    whole dataset in one process). None for anything else."""
    return list(hashes) if isinstance(images, StreamedImages) and hashes is not None else None
