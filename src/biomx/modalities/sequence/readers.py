"""Which sequences make up a dataset: FASTA files, CSV/TSV tables, or genomic intervals.

`records_from_fasta`, `records_from_table` and `records_from_intervals` list the sequences
with ids, labels, chromosomes (for chromosome splits) and where each came from
(`SequenceRecords`), encoded later by `sequence.encoding.encode`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfaidx

from biomx.errors import DataError

_RC_STRING = str.maketrans("ACGTNRYSWKMBDHVacgtnryswkmbdhv", "TGCANYRSWMKVHDBtgcanyrswmkvhdb")
_INTERVAL_ID = re.compile(r"([^:\s]+):(\d+)-(\d+)(?:\([+.-]\))?")


@dataclass
class SequenceRecords:
    """Sequences with their ids, labels, chromosomes and sources, index-aligned.

    `labels`: a class name per record, a list of names (multilabel) or None (unlabelled); a
    regression task converts them with float(). `chromosomes`: from ids like "chr8:100-300",
    else None. `sources`: where each record is ("file: line 7"), for error messages.
    """

    ids: list[str]
    sequences: list[str]
    labels: list[Any]
    chromosomes: list[str | None]
    sources: list[str]

    def __post_init__(self) -> None:
        fields = (self.ids, self.sequences, self.labels, self.chromosomes, self.sources)
        if len({len(f) for f in fields}) != 1:
            raise ValueError("ids, sequences, labels, chromosomes and sources must be aligned")

    def __len__(self) -> int:
        return len(self.ids)


def parse_interval_id(record_id: str) -> tuple[str, int, int] | None:
    """Parse "chrom:start-end", optionally with "(+)"/"(-)"/"(.)", to (chrom, start, end).

    Returns:
        (chrom, start, end), or None for another form or end < start.
    """
    match = _INTERVAL_ID.fullmatch(record_id)
    if match is None or int(match[3]) < int(match[2]):
        return None
    return match[1], int(match[2]), int(match[3])


def _records(ids: list[str], sequences: list[str], raw_labels: list[str | None],
             sources: list[str], chromosomes: list[str | None] | None = None) -> SequenceRecords:
    """Build records; if any label has a '|', every label becomes a list ("a|b" -> [a, b])."""
    labels: list[Any] = raw_labels
    if any(v is not None and "|" in v for v in raw_labels):
        labels = [v if v is None else [s.strip() for s in v.split("|") if s.strip()]
                  for v in raw_labels]
    if chromosomes is None:
        chromosomes = [(parse_interval_id(i) or (None,))[0] for i in ids]
    return SequenceRecords(ids, sequences, labels, chromosomes, sources)


def _lines(path: Path) -> Iterator[str]:
    """Stream the lines of a UTF-8 text file (optionally .gz), without line ends."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:  # type: ignore[operator]
            for line in f:
                yield line.rstrip("\r\n")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file of sequences (byte {e.start} is not UTF-8)") from None
    except (OSError, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{path}: cannot read: {' '.join(reason.split())}") from e


def _read_fasta(path: Path) -> list[tuple[str, str, int]]:
    """(header without '>', sequence, header line number) per record; multi-line records."""
    records: list[tuple[str, list[str], int]] = []
    for n, line in enumerate(_lines(path), start=1):
        line = line.strip()
        if not line or line.startswith(";"):  # blank, or an old-style comment
            continue
        if line.startswith(">"):
            if not line[1:].strip():
                raise DataError(f"{path}: line {n}: empty FASTA header '>'")
            records.append((line[1:].strip(), [], n))
        elif not records:
            raise DataError(f"{path}: line {n}: sequence before the first '>' header; "
                            "expected a FASTA file")
        else:
            records[-1][1].append("".join(line.split()))
    if not records:
        raise DataError(f"{path}: no FASTA records (empty file?)")
    for header, chunks, n in records:
        if not chunks:
            raise DataError(f"{path}: line {n}: record {header.split()[0]!r} has no sequence")
    return [(header, "".join(chunks), n) for header, chunks, n in records]


def _read_table(path: Path, delimiter: str | None = None) -> tuple[list[str], list[dict]]:
    """(header, rows) of a CSV/TSV: delimiter from the extension, else the header line."""
    lines = list(_lines(path))
    if delimiter is None:
        first = lines[0] if lines else ""
        delimiter = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(
            Path(path.name.removesuffix(".gz")).suffix.lower(),
            "\t" if first.count("\t") > first.count(",") else ",")
    try:
        reader = csv.DictReader(io.StringIO("\n".join(lines)), delimiter=delimiter)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        return list(reader.fieldnames), list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: cannot read table: {e}") from e


def _require(path: Path, header: list[str], *columns: tuple[str | None, str]) -> None:
    """Raise unless each (column, the argument naming it or "") is in the header."""
    for column, arg in columns:
        if column is not None and column not in header:
            fix = f"rename the column or pass {arg}=..." if arg else "rename the column"
            raise DataError(f"{path}: missing column {column!r} (columns found: "
                            f"{', '.join(header) or 'none'}); {fix}")


def _cell(where: str, row: dict, column: str) -> str:
    value = (row.get(column) or "").strip()  # a short row gives None
    if not value:
        raise DataError(f"{where}: empty {column!r}")
    return value


def records_from_fasta(files: dict[str, str | Path] | list[str | Path], *,
                       label_from: str | None = "file", labels_csv: str | Path | None = None,
                       id_column: str = "id", label_column: str = "label") -> SequenceRecords:
    """Read FASTA files (optionally .gz); a record's id is the first word of its header.

    Args:
        files: {label: path} for label_from="file", else a list of paths (or a dict, keys unused).
        label_from: "file" (the dict key); "header" (a word `<label_column>=value`, else the
            last '|' field of the first word: ">id|label"); "csv" (`labels_csv`, with columns
            `id_column` and `label_column`); None (unlabelled). "a|b" labels: multilabel.

    Returns:
        SequenceRecords in file, then record order.

    Raises:
        DataError: unreadable or empty file, a sequence before the first header, a record
            without sequence or (label_from="header") label, an id missing from `labels_csv`.
        ValueError: invalid `label_from`, or files not a dict for label_from="file".
    """
    if label_from not in ("file", "header", "csv", None):
        raise ValueError(f"label_from must be 'file', 'header', 'csv' or None, got {label_from!r}")
    if label_from == "file" and not isinstance(files, dict):
        raise ValueError("label_from='file' needs files as {label: path}")
    table: dict[str, str] = {}
    if label_from == "csv":
        if labels_csv is None:
            raise ValueError("label_from='csv' needs labels_csv")
        header, rows = _read_table(Path(labels_csv))
        _require(Path(labels_csv), header, (id_column, "id_column"), (label_column, "label_column"))
        for n, row in enumerate(rows, start=2):
            where = f"{labels_csv}: row {n}"
            table[_cell(where, row, id_column)] = _cell(where, row, label_column)
    ids, sequences, raw_labels, sources = [], [], [], []
    for file_label, file in (files.items() if isinstance(files, dict) else [(None, f) for f in files]):
        for text, sequence, n in _read_fasta(Path(file)):
            source, words = f"{file}: line {n}", text.split()
            record_id, label = words[0], file_label if label_from == "file" else None
            if label_from == "header":
                key = f"{label_column}="
                label = next((w[len(key):] for w in words[1:] if w.startswith(key)), None)
                if label is None and "|" in record_id:
                    record_id, label = record_id.rsplit("|", 1)
                if not label:
                    raise DataError(f"{source}: no label in header {text!r}; expected "
                                    f"'>id|label' or '>id {label_column}=...'")
            elif label_from == "csv":
                if record_id not in table:
                    raise DataError(f"{source}: record {record_id!r} has no label in "
                                    f"{labels_csv} (column {id_column!r})")
                label = table[record_id]
            ids.append(record_id)
            sequences.append(sequence)
            raw_labels.append(None if label is None else str(label))
            sources.append(source)
    return _records(ids, sequences, raw_labels, sources)


def records_from_table(path: str | Path, *, sequence_column: str = "sequence",
                       label_column: str | None = "label", id_column: str | None = "id",
                       delimiter: str | None = None) -> SequenceRecords:
    """Read sequences from a CSV or TSV (by extension, else by the header line).

    Args:
        path: the table (UTF-8, first line = header, optionally .gz).
        sequence_column, label_column: the columns; label_column None = unlabelled; "a|b"
            labels: multilabel.
        id_column: record ids; None or absent: "row2", "row3", ... (header = row 1).
        delimiter: forces the delimiter.

    Returns:
        SequenceRecords in row order.

    Raises:
        DataError: unreadable table, missing column, an empty cell (row numbered, header = 1).
    """
    path = Path(path)
    header, rows = _read_table(path, delimiter)
    _require(path, header, (sequence_column, "sequence_column"), (label_column, "label_column"))
    has_ids = id_column is not None and id_column in header
    ids, sequences, raw_labels, sources = [], [], [], []
    for n, row in enumerate(rows, start=2):
        where = f"{path}: row {n}"
        sequences.append(_cell(where, row, sequence_column))
        raw_labels.append(_cell(where, row, label_column) if label_column else None)
        ids.append(_cell(where, row, id_column) if has_ids else f"row{n}")
        sources.append(where)
    return _records(ids, sequences, raw_labels, sources)


def _interval_rows(path: Path) -> tuple[list[str] | None, list[tuple[int, dict]]]:
    """(header or None, [(line, {column: value})]) of a CSV/TSV, or a BED file (whitespace
    separated, optional header line naming chrom, start, end; else BED's column order)."""
    if Path(path.name.removesuffix(".gz")).suffix.lower() in (".csv", ".tsv"):
        header, table = _read_table(path)
        _require(path, header, ("chrom", ""), ("start", ""), ("end", ""))
        return header, list(enumerate(table, start=2))
    header, rows = None, []
    for n, line in enumerate(_lines(path), start=1):
        fields = line.split()
        if not fields or fields[0] in ("track", "browser"):
            continue
        names = [f.lstrip("#") for f in fields]
        if header is None and not rows and {"chrom", "start", "end"} <= set(names):
            header = names
        elif not fields[0].startswith("#"):
            columns = header or ("chrom", "start", "end", "name", "score", "strand")
            rows.append((n, dict(zip(columns, fields, strict=False))))
    return header, rows


def records_from_intervals(path: str | Path, genome: str | Path, *, flank: int = 0,
                           label_column: str | None = "label",
                           strand_column: str | None = "strand") -> SequenceRecords:
    """Fetch the sequences of genomic intervals from a genome FASTA (pyfaidx, indexed).

    Coordinates are 0-based half-open (BED); the window is [start - flank, end + flank), reverse
    complemented on the minus strand. Ids are "chrom:start-end(strand)" of the listed interval.

    Args:
        path: BED (chrom, start, end[, name, score, strand]; label = name), or a CSV/TSV or BED
            with a header line naming chrom, start, end (label = `label_column`).
        genome: the genome FASTA; pyfaidx builds its .fai next to it if missing.
        flank: bases added on each side.
        label_column: the label column of a file with a header; None = unlabelled.
        strand_column: "+", "-" or "." (absent or empty: "+"); None ignores strands.

    Returns:
        SequenceRecords in line order.

    Raises:
        DataError: an unreadable file, no intervals, a missing column or name, a bad interval
            or strand, an unknown chromosome or a window past its end (file and line named).
        ValueError: flank < 0.
    """
    path, genome = Path(path), Path(genome)
    if flank < 0:
        raise ValueError(f"flank must be >= 0, got {flank}")
    header, rows = _interval_rows(path)
    if not rows:
        raise DataError(f"{path}: no intervals")
    if header is not None:
        _require(path, header, (label_column, "label_column"))
    # A BED file without a header: label = the name column, if the first line has one.
    label_key = label_column if header else ("name" if "name" in rows[0][1] else None)
    strand_key = strand_column if header else (strand_column and "strand")
    ids, sequences, raw_labels, sources, chromosomes = [], [], [], [], []
    try:
        with pyfaidx.Fasta(str(genome), as_raw=True) as fasta:
            for n, row in rows:
                source = f"{path}: line {n}"
                chrom, start, end = row.get("chrom"), row.get("start", ""), row.get("end", "")
                if not (chrom and start.isdigit() and end.isdigit() and int(start) < int(end)):
                    raise DataError(f"{source}: expected chrom, start, end with 0 <= start < end "
                                    f"(0-based, half-open), got {chrom!r}, {start!r}, {end!r}")
                strand = (row.get(strand_key) or "+").strip() if strand_key else "+"
                if strand not in ("+", "-", "."):
                    raise DataError(f"{source}: strand must be '+', '-' or '.', got {strand!r}")
                if chrom not in fasta:
                    raise DataError(f"{source}: chromosome {chrom!r} is not in {genome} (it has "
                                    f"{', '.join(list(fasta.keys())[:5])}, ...)")
                lo, hi, size = int(start) - flank, int(end) + flank, len(fasta[chrom])
                if lo < 0 or hi > size:
                    raise DataError(f"{source}: window {chrom}:{lo}-{hi} (flank {flank}) is past "
                                    f"the ends of {chrom} (length {size}) in {genome}")
                sequence = fasta[chrom][lo:hi]
                ids.append(f"{chrom}:{start}-{end}({strand})")
                sequences.append(sequence.translate(_RC_STRING)[::-1] if strand == "-"
                                 else sequence)
                raw_labels.append(_cell(source, row, label_key) if label_key else None)
                sources.append(source)
                chromosomes.append(chrom)
    except (OSError, ValueError, pyfaidx.FastaIndexingError) as e:
        raise DataError(f"{genome}: cannot read genome FASTA: {' '.join(str(e).split())}") from e
    return _records(ids, sequences, raw_labels, sources, chromosomes)
