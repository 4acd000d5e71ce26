"""`biomx shards write|list|verify`: pack a folder-per-class tree or a CSV manifest into tar
shards, list a set, check every shard against its index (docs/shards.md).

Packing keeps each file's bytes unchanged (any format: the reader decodes them later, as it
would the file) as member `<key>.<ext>` (the file's own extension), with `<key>.cls` (the class
number, WebDataset's convention; the class names are in the index's `meta.classes`) and
`<key>.json` (`id`: the file's path relative to the source, `label`, `group`: the patient id
or null, and the manifest's other columns). Keys are the sample's number, `00000000`, ...

Nothing here imports torch: the commands answer at once.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from biomx.errors import DataError

SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
              "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
OWN_EXTS = ("cls", "json")


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 512 * 2**20, '1000' -> 1000 bytes (an argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB, 1GB or 2GiB, got {text[:80]!r}")
    value = int(float(match.group(1)) * SIZE_UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text[:80]!r}")
    return value


def member_ext(path: Path) -> str:
    """A file's extension as a member's: `png`, `dcm`, `nii.gz` (a compressed file keeps both)."""
    suffixes = [s.lower() for s in Path(path.name).suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSED:
        ext = "".join(suffixes[-2:])[1:]
    else:
        ext = suffixes[-1][1:] if suffixes else "bin"
    if ext in OWN_EXTS:
        raise DataError(f"{path}: a .{ext} file cannot be packed (the set's .{ext} member holds the sample's "
                        "label and ids)")  # fmt: skip
    return ext


class FileMembers(Mapping):
    """One sample's members: its file (read when the writer asks for it) plus `.cls` and `.json`."""

    def __init__(self, path: Path, ext: str, own: dict[str, bytes]) -> None:
        self.path, self.ext, self.own = path, ext, own

    def __getitem__(self, ext: str) -> bytes:
        if ext != self.ext:
            return self.own[ext]
        try:
            return self.path.read_bytes()
        except OSError as err:
            raise DataError(f"{self.path}: cannot read ({err.strerror or err})") from None

    def __iter__(self) -> Iterator[str]:
        return iter([self.ext, *self.own])

    def __len__(self) -> int:
        return 1 + len(self.own)


def _folder_rows(root: Path) -> list[dict[str, Any]]:
    """A folder per class: every file below each (non-hidden) class folder, sorted."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders; expected {root}/<class>/<files> or a CSV manifest")
    rows = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip
        if not files:
            raise DataError(f"{folder}: class folder has no files")
        rows += [{"path": p, "label": folder.name, "group": None, "extra": {}} for p in files]
    return rows


def _csv_rows(manifest: Path) -> list[dict[str, Any]]:
    """A manifest `path,label[,patient_id]` (more columns are kept in each sample's .json);
    relative paths are relative to the manifest's folder; `a|b` labels are multilabel."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header, table = list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{manifest}: cannot read CSV: {' '.join(str(err).split())}") from None
    for column in ("path", "label"):
        if column not in header:
            raise DataError(f"{manifest}: missing column {column!r} (columns found: {', '.join(header) or 'none'})")
    rows = []
    for number, row in enumerate(table, start=2):
        path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not path or not label:
            raise DataError(f"{manifest}: row {number}: empty {'path' if not path else 'label'!r}")
        extra = {k: v for k, v in row.items() if k not in ("path", "label", "patient_id") and k is not None}
        labels: Any = [s.strip() for s in label.split("|") if s.strip()] if "|" in label else label
        rows.append({"path": manifest.parent / path, "label": labels,
                     "group": (row.get("patient_id") or "").strip() or None, "extra": extra})  # fmt: skip
    return rows


def source_samples(source: str | Path, seed: int | None = 0) -> tuple[Iterator[tuple[str, FileMembers]],
                                                                     dict[str, Any], int]:
    """(samples for `write_shards`, the index's meta, the sample count) of a folder-per-class
    tree or a CSV manifest, in an order drawn from `seed` (None: the source's order). A stream
    only shuffles shard order and within a bounded buffer, so a set written class by class
    would give one-class batches: shuffling once at write time is what makes shards mixed. Keys
    stay the source's row numbers (the order is the seed's, the same on a resumed write)."""
    source = Path(source)
    if source.is_dir():
        rows, root = _folder_rows(source), source
    elif source.is_file():
        rows, root = _csv_rows(source), source.parent
    else:
        raise DataError(f"{source}: no such folder or CSV manifest")
    names = sorted({n for r in rows for n in ([r["label"]] if isinstance(r["label"], str) else r["label"])})
    number = {name: k for k, name in enumerate(names)}
    width = max(8, len(str(len(rows))))

    order = range(len(rows)) if seed is None else random.Random(seed).sample(range(len(rows)), len(rows))

    def samples() -> Iterator[tuple[str, FileMembers]]:
        for i in order:
            row = rows[i]
            path: Path = row["path"]
            inside = not path.is_absolute() or path.is_relative_to(root)  # else a file outside the source's folder
            ident = Path(os.path.relpath(path, root)).as_posix() if inside else str(path)
            doc = {"id": ident, "label": row["label"], "group": row["group"], **row["extra"]}
            own = {"json": json.dumps(doc, ensure_ascii=False).encode()}
            if isinstance(row["label"], str):
                own = {"cls": str(number[row["label"]]).encode(), **own}
            yield f"{i:0{width}d}", FileMembers(path, member_ext(path), own)

    meta = {"classes": names, "source": str(source), "order_seed": seed}
    return samples(), meta, len(rows)


def _cmd_write(args: argparse.Namespace) -> None:
    from biomx.data.shard_writer import write_shards

    samples, meta, count = source_samples(args.source, None if args.no_shuffle else args.seed)
    paths = write_shards(samples, args.out_dir, max_count=args.max_count, max_bytes=args.max_size, meta=meta)
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {count} samples in {len(paths)} shards ({size / 1e6:.1f} MB) to {args.out_dir} "
          f"(index.json)")  # fmt: skip


def _label_text(counts: Counter) -> str:
    return ", ".join(f"{label} {n}" for label, n in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "no labels"


def _cmd_list(args: argparse.Namespace) -> None:
    from biomx.data.shards import open_shards, sample_table

    index = open_shards(args.out_dir)
    labels = sample_table(index)["label"]
    total: Counter = Counter()
    for shard in index.shards:
        counts = Counter(_hashable(label) for label in labels[shard.start:shard.start + shard.count])
        total += counts
        print(f"{shard.name}  {shard.count} samples  {shard.size / 1e6:.1f} MB  {_label_text(counts)}")
    size = sum(s.size for s in index.shards)
    print(f"total: {len(index)} samples in {len(index.shards)} shards, {size / 1e6:.1f} MB; {_label_text(total)}")


def _hashable(label: Any) -> Any:
    return "|".join(map(str, label)) if isinstance(label, list) else label


def _cmd_verify(args: argparse.Namespace) -> None:
    from biomx.data.shards import read_index, verify_shards

    index = read_index(args.out_dir)
    bad = verify_shards(index)
    if bad:
        raise DataError("\n".join(bad))
    print(f"{len(index.shards)} shards, {len(index)} samples: every shard matches {index.source}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Adds `biomx shards write|list|verify`."""
    from biomx.argtypes import positive_int

    p = sub.add_parser("shards", help="WebDataset tar shards: pack a folder or manifest, list, verify "
                       "(see docs/shards.md)")  # fmt: skip
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    w = actions.add_parser("write", help="pack a folder-per-class tree or a CSV manifest (path,label[,patient_id]) "
                           "into tar shards with index.json; rerun to resume")  # fmt: skip
    w.add_argument("source", help="a folder with one subfolder per class, or a CSV manifest")
    w.add_argument("out_dir", help="folder for shard-000000.tar, ... and index.json")
    w.add_argument("--max-count", type=positive_int, default=10_000, metavar="N",
                   help="most samples per shard (default: %(default)s)")  # fmt: skip
    w.add_argument("--max-size", type=parse_size, default=256 * 10**6, metavar="SIZE",
                   help="largest shard, e.g. 500MB or 1GB (default: 256MB)")  # fmt: skip
    w.add_argument("--seed", type=int, default=0, help="seed of the sample order (default: %(default)s)")
    w.add_argument("--no-shuffle", action="store_true",
                   help="keep the source's order (default: shuffle once, so every shard mixes the classes)")
    w.set_defaults(func=_cmd_write)
    ls = actions.add_parser("list", help="samples, size and label counts per shard (a set without index.json "
                            "is scanned)")  # fmt: skip
    ls.add_argument("out_dir", help="the shard set's folder")
    ls.set_defaults(func=_cmd_list)
    v = actions.add_parser("verify", help="check every shard's size and sha256 against index.json")
    v.add_argument("out_dir", help="the shard set's folder")
    v.set_defaults(func=_cmd_verify)
