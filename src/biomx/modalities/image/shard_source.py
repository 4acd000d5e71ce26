"""`data.source: shards`: 2D images packed by `biomx shards write` (docs/shards.md), read in place.

Labels, ids and patient ids come from the set's `sample_table`; each sample's content hash is its
packed file's sha256 (`sample_digests`, the same digest the file itself has), so the row store,
split.csv and the duplicate check treat a shard set like the folder it was packed from. Rows are
decoded from the member's bytes (`Decoding.decode_bytes`: the same decoders as for files), lazily
into the row store with `storage: stream`, or all up front with `storage: memory`. A member that
fails names itself: `SET/shard-000003.tar: 00000017.png: cannot read image: ...`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from biomx.data.row_store import RowStore
from biomx.data.samples import Samples, sha256_file
from biomx.data.shards import (
    INDEX_NAME,
    ShardIndex,
    member_where,
    open_shards,
    payload_member,
    sample_digests,
)
from biomx.data.shards import sample_table as shard_table
from biomx.errors import ConfigError, DataError
from biomx.modalities.image.streaming import Decoding, StreamDecodeError, StreamedImages, open_store


class ShardImages(StreamedImages):
    """`StreamedImages` whose rows are the data members of a shard set (the index pickles into
    DataLoader workers; each worker opens the tars itself)."""

    def __init__(self, index: ShardIndex, decoding: Decoding, store: RowStore | None) -> None:
        super().__init__([member_where(index, i) for i in range(len(index))], decoding, store)
        self.index = index

    def decode_row(self, i: int) -> np.ndarray:
        try:
            ext, data = payload_member(self.index, i)
        except DataError as e:  # a truncated or replaced shard, found in a worker: one line all the same
            raise StreamDecodeError(str(e)) from None
        return self.decoding.decode_bytes(data, ext, member_where(self.index, i, ext))


def load_shards(path: Path, settings: dict[str, Any], decoding: Decoding, storage: Callable[[int], str],
                use_cache: bool, on_error: str) -> Samples:
    """The images of the shard set at `path` (a folder with index.json, or plain tars scanned).

    Args:
        path: the set's folder.
        settings: every decoding setting (part of the row store's key).
        decoding: how each member becomes a row.
        storage: the sample count -> "stream" (decode when a batch needs a row) or "memory" (decode all now).
        use_cache: keep decoded rows in the row store (`data.image.cache`).
        on_error: must be "raise": a member that fails stops the run, named.

    Raises:
        ConfigError: on_error skip.
        DataError: a missing or unreadable set, a sample without a label or with no single data
            member, a member that cannot be decoded (memory).
    """
    if on_error != "raise":
        raise ConfigError("data.on_error: skip is not supported with data.source: shards (a member that fails stops "
                          "the run, named); fix or drop the sample and repack, or use on_error: raise")  # fmt: skip
    index = open_shards(path)
    if len(index) == 0:
        raise DataError(f"{path}: the shard set holds no samples")
    table = shard_table(index)
    for i, label in enumerate(table["label"]):
        if label is None or label == [] or label == "":
            raise DataError(f"{member_where(index, i)}: sample has no label (no .cls, no label in its .json); "
                            "pack it with `biomx shards write`")  # fmt: skip
    hashes = sample_digests(index)
    images = ShardImages(index, decoding, open_store(hashes, settings, decoding, use_cache))
    inputs: Any = images
    if storage(len(index)) == "memory":
        images.fill()  # threads, into the row store (a later run reads it back)
        inputs = images[:]
    groups = table["group"]
    index_file = Path(path) / INDEX_NAME
    return Samples(
        inputs=inputs,
        labels=list(table["label"]),
        ids=[str(x) for x in table["id"]],
        groups=np.array(groups, dtype=object) if any(g for g in groups) else None,
        hashes=hashes,
        source_sha256=sha256_file(index_file) if index_file.is_file() else None,
        where={i: member_where(index, i) for i in range(len(index))},
    )
