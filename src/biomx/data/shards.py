"""WebDataset-style tar shards: the format, the index, and reading one member by its offset.

A shard set is a folder of plain POSIX (ustar) tar files, `shard-000000.tar`, `shard-000001.tar`,
..., each holding samples as groups of members `<key>.<ext>` that share a key and sit next to
each other (`000017.png`, `000017.cls`, `000017.json`). That is the layout the `webdataset`
package reads, so a set written here streams with it too, and a set someone else made with it
can be read here. Beside the tars, `index.json` (written last, atomically) lists every shard with
its size and SHA-256 and, per sample, its key and each member's byte offset and size inside
its tar: a reader then `pread`s one member (a random-access dataset, `read_member`) or one
byte range of consecutive samples (`shard_stream.ShardStream`) without scanning any tar.

A tar set without `index.json` (made elsewhere) is indexed in memory by scanning the tar
headers once (`scan_shards`); `open_shards` picks whichever applies. Writing is in
`shard_writer.write_shards`, the command line in `shard_cli`.

Errors a user can fix (a truncated or replaced shard, a missing index, a tar that is not one)
are one `DataError` line naming the shard file and, where there is one, the member.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomx.data.shard_columns import Keys, Members, MembersBuilder
from biomx.errors import DataError

INDEX_NAME = "index.json"
FORMAT = "biomx-shards"
VERSION = 1
BLOCK = 512  # tar's block: every header is one, every member's data is padded to a multiple
HASH_CHUNK = 1 << 20


def shard_name(number: int) -> str:
    """`shard-000012.tar`: the n-th shard of a set (six digits: WebDataset brace patterns)."""
    return f"shard-{number:06d}.tar"


@dataclass(frozen=True)
class ShardInfo:
    """One tar of a set: its file name (relative to the set's folder), size in bytes, SHA-256
    (None for a scanned set: nobody recorded it), and its samples' span in the set's order."""

    name: str
    size: int
    sha256: str | None
    start: int  # the set-wide number of its first sample
    count: int


@dataclass
class ShardIndex:
    """Every sample of a shard set, where its members lie, and the shards holding them.

    Samples are numbered 0..N-1 in shard order. `members[i]` maps each extension of sample i
    to `(offset, size)`: the member's data bytes inside its shard. `checked` is True for an
    index written by `write_shards` (each member's tar header is then checked on read: the
    index and the tar must agree on the member's name and size), False for a scanned set.
    """

    root: Path
    shards: list[ShardInfo]
    keys: Keys  # a list of str is converted (shard_columns: arrays, shared by forked workers)
    members: Members  # likewise a list of dicts
    meta: dict[str, Any] = field(default_factory=dict)
    checked: bool = True
    source: str = ""  # the index file, or the folder that was scanned (for messages)
    _files: dict[str, int] = field(default_factory=dict, repr=False)
    _pid: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Keys):
            self.keys = Keys(self.keys)
        if not isinstance(self.members, Members):
            self.members = Members.of(self.members)
        self._starts = np.array([s.start for s in self.shards], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def shard_of(self) -> np.ndarray:
        """Per sample, the position of its shard in `shards`."""
        counts = [s.count for s in self.shards]
        return np.repeat(np.arange(len(self.shards)), counts)

    def path(self, shard: int) -> Path:
        return self.root / self.shards[shard].name

    def shard_for(self, i: int) -> int:
        """The position in `shards` of the shard holding sample i."""
        if not 0 <= i < len(self.keys):
            raise IndexError(f"sample {i} out of range: the set has {len(self.keys)} samples")
        return int(np.searchsorted(self._starts, i, side="right") - 1)

    def descriptor(self, shard: int) -> int:
        """An open read-only descriptor of a shard, kept for the process (pread needs no seek,
        so threads share it; a forked DataLoader worker opens its own) after checking the
        file's size against the index: a shorter or longer file is a truncated or replaced shard."""
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        name = self.shards[shard].name
        fd = self._files.get(name)
        if fd is None:
            path = self.path(shard)
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise DataError(f"{path}: shard listed in {self.source} is missing") from None
            self._files[name] = fd
        check_size(fd, self.path(shard), self.shards[shard].size)
        return fd

    def close(self) -> None:
        """Close the shards this process opened (reading again reopens them)."""
        if self._pid == os.getpid():
            for fd in self._files.values():
                os.close(fd)
        self._files = {}

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers (spawn) get no descriptors
        state = dict(self.__dict__)
        state["_files"], state["_pid"] = {}, 0
        return state


def check_size(fd: int, path: Path, expected: int) -> None:
    actual = os.fstat(fd).st_size
    if actual != expected:
        raise DataError(f"{path}: {actual} bytes where the index says {expected}: the shard is truncated "
                        "or was replaced; write it again or run `biomx shards verify`")  # fmt: skip


def read_member(index: ShardIndex, i: int, ext: str) -> bytes:
    """The bytes of member `<key>.<ext>` of sample i, read at its offset (one pread).

    Raises:
        DataError: the sample has no such member, or its shard is missing, truncated or does
            not hold that member where the index says (one line naming the shard and member).
    """
    shard = index.shard_for(i)
    members = index.members[i]
    path, key = index.path(shard), index.keys[i]
    if ext not in members:
        have = ", ".join(f".{e}" for e in members) or "none"
        raise DataError(f"{path}: sample {key!r} has no .{ext} member (it has {have})")
    offset, size = members[ext]
    fd = index.descriptor(shard)
    if not index.checked:
        return _pread(fd, size, offset, path, f"{key}.{ext}")
    block = _pread(fd, size + BLOCK, offset - BLOCK, path, f"{key}.{ext}")
    check_header(block[:BLOCK], f"{key}.{ext}", size, path)
    return block[BLOCK:]


def _pread(fd: int, size: int, offset: int, path: Path, member: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise DataError(f"{path}: member {member} ends past the end of the shard (truncated)")
    return data


def check_header(header: bytes, member: str, size: int, path: Path) -> None:
    """The tar header before a member's data must name that member and its size; anything else
    means the shard changed under its index. (The name, size and magic fields of the ustar
    header `write_shards` writes, compared directly: tarfile's parser costs 100 us a member.)"""
    name = member.encode()
    try:
        recorded = int(header[124:136].strip(b"\0 ") or b"0", 8)
    except ValueError:
        recorded = -1
    if (header[257:262] != b"ustar" or header[:len(name)] != name or header[len(name):len(name) + 1] != b"\0"
            or recorded != size):
        raise DataError(f"{path}: member {member} is not where the index says (corrupt shard or stale "
                        "index); write the shards again or run `biomx shards verify`")  # fmt: skip


def read_index(path: str | Path) -> ShardIndex:
    """A shard set's `index.json` (give the file or its folder).

    Raises:
        DataError: no index there (a plain tar set: use `scan_shards` or `open_shards`), or an
            index that is not one written by `write_shards`.
    """
    path = Path(path)
    file = path / INDEX_NAME if path.is_dir() else path
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{file}: no shard index here; write the set with `biomx shards write`, or read "
                        "a plain WebDataset tar set with open_shards (it scans the tars)") from None  # fmt: skip
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: cannot read the shard index ({' '.join(str(err).split())})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise DataError(f"{file}: not a {FORMAT} index version {VERSION}")
    try:
        return _from_records(file.parent, doc["shards"], doc.get("meta") or {}, str(file))
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{file}: malformed shard index ({type(err).__name__}: {err})") from None


def _from_records(root: Path, records: list[dict], meta: dict, source: str) -> ShardIndex:
    shards, keys, members = [], [], MembersBuilder()
    for record in records:
        samples = record["samples"]
        shards.append(ShardInfo(str(record["name"]), int(record["size"]), record.get("sha256"), len(keys),
                                len(samples)))  # fmt: skip
        for key, entry in samples:
            keys.append(str(key))
            members.add({str(ext): (offset, size) for ext, (offset, size) in entry.items()})
    return ShardIndex(root, shards, Keys(keys), members.build(), meta=dict(meta), checked=True, source=source)


def index_document(records: list[dict], meta: dict[str, Any]) -> dict[str, Any]:
    """What `index.json` holds: the format, the sample count, metadata, and per shard its name,
    size, sha256 and samples `[key, {ext: [offset, size]}]`."""
    return {"format": FORMAT, "version": VERSION, "samples": sum(len(r["samples"]) for r in records),
            "meta": meta, "shards": records}  # fmt: skip


def tar_files(folder: Path) -> list[Path]:
    """The tar files of a folder, sorted by name (hidden and temporary files skipped)."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".tar" and not p.name.startswith(".") and p.is_file())


def scan_shards(source: str | Path | Iterable[str | Path]) -> ShardIndex:
    """Index a plain WebDataset tar set in memory: a folder (its `*.tar`, sorted) or a list of
    tar files. Each tar's headers are read once (its data is skipped, not read).

    WebDataset's rule makes a sample: a member's key is its path up to the first dot of its
    file name, its extension the rest; members with the same key in a row are one sample.

    Raises:
        DataError: no tar files, an unreadable or compressed tar, a sample whose members are not
            contiguous or that repeats an extension.
    """
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of tar shards")
        paths, root = tar_files(folder), folder
    else:
        paths = [Path(p) for p in source]
        root = Path(os.path.commonpath([p.resolve().parent for p in paths])) if paths else Path(".")
    if not paths:
        raise DataError(f"{source}: no .tar shards found")
    shards, keys, members = [], [], []
    for path in paths:
        shard_keys, shard_members = _scan_tar(path)
        name = os.path.relpath(path.resolve(), root.resolve())
        shards.append(ShardInfo(name, path.stat().st_size, None, len(keys), len(shard_keys)))
        keys += shard_keys
        members += shard_members
    return ShardIndex(root, shards, keys, members, checked=False, source=str(source))


def _scan_tar(path: Path) -> tuple[list[str], list[dict[str, tuple[int, int]]]]:
    keys: list[str] = []
    members: list[dict[str, tuple[int, int]]] = []
    done: set[str] = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                folder, base = posixpath.split(info.name)
                stem, dot, ext = base.partition(".")
                if not dot or not stem:
                    continue  # WebDataset skips a name without an extension too
                key = posixpath.join(folder, stem)
                if not keys or keys[-1] != key:
                    if key in done:
                        raise DataError(f"{path}: member {info.name}: sample {key!r} is split (its members must be "
                                        "next to each other in the tar)")  # fmt: skip
                    done.add(key)
                    keys.append(key)
                    members.append({})
                if ext in members[-1]:
                    raise DataError(f"{path}: member {info.name}: sample {key!r} has two .{ext} members")
                members[-1][ext] = (info.offset_data, info.size)
    except (tarfile.ReadError, EOFError) as err:
        raise DataError(f"{path}: not a readable uncompressed tar ({err}); shards are plain .tar files") from None
    return keys, members


def open_shards(source: str | Path) -> ShardIndex:
    """A shard set from its folder or `index.json`: the index when there is one, else the
    folder's tars scanned (a set made by someone else)."""
    path = Path(source)
    if path.is_dir() and not (path / INDEX_NAME).exists():
        return scan_shards(path)
    return read_index(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shards(index: ShardIndex) -> list[str]:
    """One line per shard whose file is missing, or whose size or SHA-256 differs from the
    index (empty: every shard is intact). A scanned set records no hashes: refused."""
    if not index.checked:
        raise DataError(f"{index.source}: no {INDEX_NAME} with the shards' hashes to verify against")
    bad = []
    for number, shard in enumerate(index.shards):
        path = index.path(number)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            bad.append(f"{path}: missing")
            continue
        if size != shard.size:
            bad.append(f"{path}: {size} bytes, the index says {shard.size} (truncated or replaced)")
        elif file_sha256(path) != shard.sha256:
            bad.append(f"{path}: sha256 differs from the index (corrupt)")
    return bad


def sample_json(index: ShardIndex, i: int) -> dict[str, Any]:
    """Sample i's `.json` member decoded ({} when it has none)."""
    if "json" not in index.members[i]:
        return {}
    raw = read_member(index, i, "json")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{index.path(index.shard_for(i))}: member {index.keys[i]}.json is not JSON ({err})") from None
    return value if isinstance(value, dict) else {"value": value}


def sample_table(index: ShardIndex) -> dict[str, list[Any]]:
    """Per sample: `key`, `id`, `label` and `group`, from each sample's `.json` (what
    `biomx shards write` puts there) or its `.cls` (a class number, named through the index's
    `meta.classes` when it has them). A dataset reading the set keeps these arrays and reads the
    payload member itself (`read_member(index, i, ext)`)."""
    classes = index.meta.get("classes") or []
    table: dict[str, list[Any]] = {"key": list(index.keys), "id": [], "label": [], "group": []}
    for i, key in enumerate(index.keys):
        doc = sample_json(index, i)
        label = doc.get("label")
        if label is None and "cls" in index.members[i]:
            text = read_member(index, i, "cls").decode("utf-8", "replace").strip()
            label = classes[int(text)] if text.isdigit() and int(text) < len(classes) else text
        table["id"].append(doc.get("id", key))
        table["label"].append(label)
        table["group"].append(doc.get("group"))
    return table


OWN_MEMBERS = ("cls", "json")  # a sample's label and ids; every other member is its data


def payload_ext(index: ShardIndex, i: int) -> str:
    """The extension of sample i's data member (`png`, `dcm`, `nii.gz`, ...): its one member
    besides `.cls` and `.json`, as `biomx shards write` packs a file.

    Raises:
        DataError: the sample has no such member or several (name the one to read instead).
    """
    exts = [ext for ext in index.members[i] if ext not in OWN_MEMBERS]
    if len(exts) != 1:
        found = ", ".join(f".{e}" for e in index.members[i])
        raise DataError(f"{index.path(index.shard_for(i))}: sample {index.keys[i]!r} has {len(exts)} data members "
                        f"({found}); expected one besides .cls and .json")  # fmt: skip
    return exts[0]


def payload_member(index: ShardIndex, i: int) -> tuple[str, bytes]:
    """`(ext, bytes)` of sample i's data member: the packed file's extension (its format) and
    its bytes, unchanged. What a map-style dataset decodes in place of opening a file."""
    ext = payload_ext(index, i)
    return ext, read_member(index, i, ext)


def member_where(index: ShardIndex, i: int, ext: str | None = None) -> str:
    """`SET/shard-000003.tar: 00000017.png`: where sample i is, for an error message."""
    return f"{index.path(index.shard_for(i))}: {index.keys[i]}" + (f".{ext}" if ext else "")


def sample_digests(index: ShardIndex) -> list[str]:
    """Per sample, the SHA-256 of its data member's bytes: the content key a packed file keeps
    (the same digest as the file's own, so duplicate checks and caches keyed by file hashes
    agree whether the images come from files or from shards). Reads every data member once.
    One thread on purpose: hashing chunks in threads measured 0.48-0.86x of this (12-46 KB PNGs
    in the page cache, 2 cores): the per-member Python work holds the GIL."""
    return [hashlib.sha256(payload_member(index, i)[1]).hexdigest() for i in range(len(index))]
