"""Writing a shard set (`shards.py` describes the format): resumable, every file atomic.

Each shard is written to a hidden temporary name in the output folder, flushed, synced and
renamed (`os.replace`), so a reader never sees half a tar. After each rename a small record of
the shard (its size, SHA-256 and samples) is written atomically to `.partial/`; `index.json`
is written last, from those records, and `.partial/` removed. A write that was killed is
resumed by running it again with the same samples and limits: the shards whose record is
there and whose file still has the recorded SHA-256 are kept (their samples are only checked
by key and extensions, not read again), and writing continues after them.

The tars are deterministic (fixed owner, mode and time), so writing the same samples with the
same limits gives byte-identical shards.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from biomx.data.shards import BLOCK, INDEX_NAME, file_sha256, index_document, shard_name
from biomx.errors import ConfigError, DataError

PARTIAL = ".partial"
RESERVED_EXTS = ("cls", "json")  # what `biomx shards write` adds itself; write_shards allows them
MAX_NAME = 100  # a ustar member name without a folder: at most 100 bytes
END = 2 * BLOCK  # two zero blocks end a tar
RECORD = 20 * BLOCK  # tar files are padded to whole records, as tar(1) and tarfile write them
MTIME = 946684800  # 2000-01-01: a fixed time keeps the tars deterministic

Sample = tuple[str, Mapping[str, Any]]


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _tar_size(content: int) -> int:
    """A tar's file size for `content` bytes of headers and data: the end blocks, whole records."""
    return -(-(content + END) // RECORD) * RECORD


def member_bytes(members: Mapping[str, Any]) -> int:
    """The bytes a sample takes in a tar: a header and the padded data per member (sizes only:
    a lazy mapping's values are read once, by the writer)."""
    return sum(BLOCK + _padded(len(value)) for value in members.values())


def check_sample(key: Any, members: Mapping[str, Any], seen: set[str], position: int) -> None:
    """WebDataset's rules for a key (no '.', no '/', unique) and an extension, one line each."""
    where = f"sample {position} (key {key!r})"
    if not isinstance(key, str) or not key:
        raise DataError(f"{where}: a key must be a non-empty string")
    if "." in key or "/" in key:
        raise DataError(f"{where}: a key may not contain '.' or '/' (WebDataset splits a member's name at "
                        "the first '.'); use e.g. letters, digits, '_' and '-'")  # fmt: skip
    if not key.isprintable() or key != key.strip():
        raise DataError(f"{where}: a key may not contain control characters or surrounding spaces")
    if key in seen:
        raise DataError(f"{where}: duplicate key {key!r}: every sample of a shard set needs its own key")
    if not members:
        raise DataError(f"{where}: no members (give at least one {{extension: bytes}})")
    for ext in members:
        if not isinstance(ext, str) or not ext or "/" in ext or ext.startswith(".") or not ext.isprintable():
            raise DataError(f"{where}: member extension {ext!r}: expected e.g. 'png', 'nii.gz' (no '/' or leading '.')")
        if len(f"{key}.{ext}".encode()) > MAX_NAME:
            raise DataError(f"{where}: member name {key}.{ext} is longer than {MAX_NAME} bytes (a tar limit)")


class _Shard:
    """One tar being written to its temporary name: offsets of every member as they go in."""

    def __init__(self, out: Path, number: int) -> None:
        self.name = shard_name(number)
        self.path = out / self.name
        self.tmp = out / f".{self.name}.tmp-{os.getpid()}"
        self.file = open(self.tmp, "wb")  # noqa: SIM115  (closed in finish or abort)
        self.offset = 0
        self.samples: list[list[Any]] = []

    def add(self, key: str, members: Mapping[str, Any]) -> None:
        entry = {}
        for ext, value in members.items():
            data = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
            if data is None:
                raise DataError(f"sample {key!r}: member .{ext} is a {type(value).__name__}, not bytes")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), MTIME, 0o444
            header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
            self.file.write(header)
            entry[ext] = [self.offset + len(header), len(data)]
            self.file.write(data)
            self.file.write(b"\0" * (_padded(len(data)) - len(data)))
            self.offset += len(header) + _padded(len(data))
        self.samples.append([key, entry])

    def finish(self) -> dict[str, Any]:
        """End the tar, sync it, rename it into place; its record for the index."""
        total = _tar_size(self.offset)
        self.file.write(b"\0" * (total - self.offset))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return {"name": self.name, "size": total, "sha256": file_sha256(self.path), "samples": self.samples}

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _atomic_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, separators=(",", ":")) + "\n")  # one write: json.dump writes each token
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _kept_records(out: Path, limits: dict[str, int]) -> list[dict[str, Any]]:
    """The records of an earlier write with the same limits whose shards are intact, in order,
    up to the first missing or changed one (a finished set's index counts as such a write)."""
    partial = out / PARTIAL
    records: list[dict[str, Any]] = []
    if (out / INDEX_NAME).is_file() and not any(partial.glob("shard-*.json")):
        try:
            doc = json.loads((out / INDEX_NAME).read_text(encoding="utf-8"))
            if doc.get("meta", {}).get("limits") == limits:
                records = list(doc["shards"])
        except (OSError, ValueError, KeyError, AttributeError):
            records = []
    else:
        for number in range(len(list(partial.glob("shard-*.json")))):
            try:
                record = json.loads((partial / f"{shard_name(number)}.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                break
            if record.get("limits") != limits:
                break
            records.append(record)
    kept = []
    for record in records:
        path = out / str(record.get("name"))
        if not path.is_file() or path.stat().st_size != record.get("size") or file_sha256(path) != record.get("sha256"):
            break
        kept.append(record)
    return kept


def _clean(out: Path) -> None:
    """Temporary files of a killed writer (hidden, so WebDataset globs never see them)."""
    for tmp in out.glob(".shard-*.tar.tmp-*"):
        tmp.unlink(missing_ok=True)
    for tmp in out.glob(f".{INDEX_NAME}.tmp-*"):
        tmp.unlink(missing_ok=True)


class _Writer:
    """Fills shards up to the limits, keeping the shards an interrupted write finished."""

    def __init__(self, out: Path, max_count: int, max_bytes: int, kept: list[dict[str, Any]]) -> None:
        self.out, self.max_count, self.max_bytes = out, max_count, max_bytes
        self.limits = {"max_count": max_count, "max_bytes": max_bytes}
        self.kept = [(key, set(entry)) for record in kept for key, entry in record["samples"]]
        self.records = [{k: v for k, v in r.items() if k != "limits"} for r in kept]
        self.position = 0
        self.shard: _Shard | None = None
        (out / PARTIAL).mkdir(exist_ok=True)
        for record in self.records:  # kept from a finished index: recorded as if just written
            if not (out / PARTIAL / f"{record['name']}.json").is_file():
                _atomic_json(out / PARTIAL / f"{record['name']}.json", {**record, "limits": self.limits})

    def add(self, key: str, members: Mapping[str, Any]) -> None:
        if self.position < len(self.kept):
            was_key, was_exts = self.kept[self.position]
            if (was_key, was_exts) != (key, set(members)):
                raise ConfigError(f"{self.out}: sample {self.position} is {key!r} ({', '.join(members)}) but the "
                                  f"interrupted write had {was_key!r} ({', '.join(sorted(was_exts))}) there: the "
                                  "samples changed; remove the folder or write elsewhere")  # fmt: skip
            self.position += 1
            return
        members = dict(members.items())  # a lazy mapping's files are read here, once
        size = member_bytes(members)
        if self.shard is not None and (len(self.shard.samples) >= self.max_count
                                       or _tar_size(self.shard.offset + size) > self.max_bytes):  # fmt: skip
            self._finish()
        if self.shard is None:
            self.shard = _Shard(self.out, len(self.records))
        self.shard.add(key, members)
        self.position += 1

    def _finish(self) -> None:
        assert self.shard is not None
        record = self.shard.finish()
        self.shard = None
        _atomic_json(self.out / PARTIAL / f"{record['name']}.json", {**record, "limits": self.limits})
        self.records.append(record)

    def close(self, meta: dict[str, Any]) -> list[dict[str, Any]]:
        if self.position < len(self.kept):
            raise ConfigError(f"{self.out}: the samples end at {self.position}, but the interrupted write had "
                              f"{len(self.kept)}: the samples changed; remove the folder or write elsewhere")  # fmt: skip
        if self.shard is not None:
            self._finish()
        _atomic_json(self.out / INDEX_NAME, index_document(self.records, {**meta, "limits": self.limits}))
        shutil.rmtree(self.out / PARTIAL, ignore_errors=True)
        for path in self.out.glob("shard-*.tar"):  # an earlier, longer write's last shards: not in the set now
            number = path.name[len("shard-"):-len(".tar")]
            if len(number) == 6 and number.isdigit() and int(number) >= len(self.records):
                path.unlink()
        return self.records

    def abort(self) -> None:
        if self.shard is not None:
            self.shard.abort()


def write_shards(samples: Iterable[Sample], out_dir: str | Path, *, max_count: int = 10_000,
                 max_bytes: int = 256 * 10**6, meta: dict[str, Any] | None = None) -> list[Path]:
    """Write samples as WebDataset tar shards `shard-000000.tar`, ... and their `index.json`.

    Args:
        samples: `(key, {extension: bytes})` per sample, in the order the set keeps. A value may
            be any mapping; its values are read only when the sample is written (a resumed write
            skips the finished shards' samples by key without reading them).
        out_dir: the set's folder (created if needed).
        max_count: most samples per shard.
        max_bytes: a shard is closed before a sample that would take its file past this size
            (a sample bigger than it gets a shard of its own).
        meta: JSON-able facts kept in the index (e.g. `classes`, the source).

    Returns:
        The shard files, in order.

    Raises:
        DataError: a bad or duplicate key or extension, a value that is not bytes.
        ConfigError: limits below 1, or an interrupted write in `out_dir` of other samples.
    """
    if max_count < 1 or max_bytes < 1:
        raise ConfigError(f"shards: max_count and max_bytes must be at least 1, got {max_count} and {max_bytes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    writer = _Writer(out, max_count, max_bytes, _kept_records(out, {"max_count": max_count, "max_bytes": max_bytes}))
    seen: set[str] = set()
    try:
        for position, (key, members) in enumerate(samples):
            check_sample(key, members, seen, position)
            seen.add(key)
            writer.add(key, members)
        records = writer.close(dict(meta or {}))
    except BaseException:
        writer.abort()
        raise
    return [out / record["name"] for record in records]


def tar_bytes(members: dict[str, bytes]) -> bytes:
    """A small tar of `{name: bytes}` as `tarfile` writes it (for tests of foreign sets)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
