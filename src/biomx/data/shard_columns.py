"""A shard index's per-sample columns held as numpy arrays, not Python objects.

A million-sample set as lists of str and dicts of tuples takes about 540 bytes a sample (540 MB)
in every process that opens it: each rank and each DataLoader worker. And a forked worker
un-shares the pages it touches, because reading a Python object writes its reference count.
As arrays the same index takes about 60 bytes a sample (8-character keys, three members), and
forked workers keep sharing it. `Keys` and `Members` still read like the lists they replace:
`keys[i]` is a str, `members[i]` a dict `{ext: (offset, size)}`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


class Keys(Sequence):
    """Sample keys as one fixed-width bytes array (UTF-8; keys hold no NUL)."""

    def __init__(self, keys: Iterable[str]) -> None:
        encoded = [k.encode() for k in keys]
        self.array = np.array(encoded, dtype=f"S{max((len(k) for k in encoded), default=1) or 1}")

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [k.decode() for k in self.array[i].tolist()]
        return self.array[i].decode()

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self.array.tolist())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Keys | list | tuple) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  (mutable-looking sequence: not hashable, as a list)

    def index(self, key: str, start: int = 0, stop: int | None = None) -> int:
        hits = np.flatnonzero(self.array[start:stop] == key.encode())
        if not len(hits):
            raise ValueError(f"{key!r} is not a key of this set")
        return start + int(hits[0])


class MembersBuilder:
    """Collects `{ext: (offset, size)}` per sample into compact arrays (`build()`)."""

    def __init__(self) -> None:
        self.layouts: dict[tuple[str, ...], int] = {}
        self.layout = array("H")
        self.offsets = array("q")
        self.sizes = array("q")
        self.widths = array("B")

    def add(self, members: dict[str, Any]) -> None:
        exts = tuple(members)
        self.layout.append(self.layouts.setdefault(exts, len(self.layouts)))
        self.widths.append(len(exts))
        for offset, size in members.values():
            self.offsets.append(int(offset))
            self.sizes.append(int(size))

    def build(self) -> Members:
        widths = np.frombuffer(self.widths, dtype=np.uint8).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        return Members(list(self.layouts), np.frombuffer(self.layout, dtype=np.uint16).copy(), starts,
                       np.frombuffer(self.offsets, dtype=np.int64).copy(),
                       np.frombuffer(self.sizes, dtype=np.int64).copy())  # fmt: skip


class Members(Sequence):
    """Per sample `{ext: (offset, size)}`: its members' data inside its shard, in tar order."""

    def __init__(self, layouts: list[tuple[str, ...]], layout: np.ndarray, starts: np.ndarray,
                 offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.layouts, self.layout, self.starts, self.offsets, self.sizes = layouts, layout, starts, offsets, sizes

    @classmethod
    def of(cls, entries: Iterable[dict[str, Any]]) -> Members:
        builder = MembersBuilder()
        for entry in entries:
            builder.add(entry)
        return builder.build()

    def __len__(self) -> int:
        return len(self.layout)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = int(i) + len(self) if int(i) < 0 else int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range: {len(self)} samples")
        lo = int(self.starts[i])
        exts = self.layouts[int(self.layout[i])]
        return {ext: (int(self.offsets[lo + k]), int(self.sizes[lo + k])) for k, ext in enumerate(exts)}

    def span(self, i: int) -> tuple[int, int]:
        """(first data byte, end of the last member's data) of sample i inside its shard."""
        lo, hi = int(self.starts[i]), int(self.starts[i + 1])
        return int(self.offsets[lo:hi].min()), int((self.offsets[lo:hi] + self.sizes[lo:hi]).max())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Members | list | tuple):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]
