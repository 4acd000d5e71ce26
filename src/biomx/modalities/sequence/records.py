"""DNA, RNA and protein sequences: from files on disk to a batch of tensors.

1. Sources (`records_from_fasta`, `records_from_table`, `records_from_intervals`) list the
   sequences with ids, labels, chromosomes (for chromosome splits) and where each came from.
2. `encode` turns all of them at once into ONE uint8 token tensor (N, L) via a byte lookup table.
3. `SequenceDataset.__getitems__` shifts and reverse-complements a whole batch of tokens, then
   one-hot encodes it (or hands the tokens to an embedding model).

Tokens: letter k of the alphabet is token k, the ambiguity codes follow in `AMBIGUITY` order:

    dna      A0 C1 G2 T3 | N4 R5 Y6 S7 W8 K9 M10 B11 D12 H13 V14          (rna: U3 for T3)
    protein  A0 C1 D2 E3 F4 G5 H6 I7 K8 L9 M10 N11 P12 Q13 R14 S15 T16 V17 W18 Y19
             | X20 B21 Z22 J23 U24 O25
    PAD = 255

One-hot, a code is a distribution over its letters (N: 0.25 each, R: A and G 0.5 each, X: 1/20
each; selenocysteine U counts as C, pyrrolysine O as K). Lower case (soft-masked) encodes like
upper case; `decode` returns upper case.
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

import numpy as np
import pyfaidx
import torch
from torch.utils.data import Dataset

from biomx.data.batching import batch_generator
from biomx.errors import DataError

ALPHABETS = {"dna": "ACGT", "rna": "ACGU", "protein": "ACDEFGHIKLMNPQRSTVWY"}
_IUPAC = {"N": "ACGT", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC",
          "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG"}
AMBIGUITY = {"dna": _IUPAC, "rna": {c: s.replace("T", "U") for c, s in _IUPAC.items()},
             "protein": {"X": ALPHABETS["protein"], "B": "DN", "Z": "EQ", "J": "IL", "U": "C",
                         "O": "K"}}
PAD = 255
_INVALID = 254  # what the encode lookup table gives for a byte that is no token
_RC_STRING = str.maketrans("ACGTNRYSWKMBDHVacgtnryswkmbdhv", "TGCANYRSWMKVHDBtgcanyrswmkvhdb")
_INTERVAL_ID = re.compile(r"([^:\s]+):(\d+)-(\d+)(?:\([+.-]\))?")


@dataclass(frozen=True)
class _Spec:
    """An alphabet's lookup tables: by ASCII byte (`lut`) or by token (the others)."""

    letters: str
    codes: str  # ambiguity codes, tokens len(letters), len(letters) + 1, ...
    lut: np.ndarray  # (256,) uint8 byte -> token, or _INVALID
    chars: np.ndarray  # (256,) uint8 token -> upper-case byte; 0 for PAD, 1 for no token
    onehot: np.ndarray  # (A, 256) float32: token -> distribution over letters; PAD -> zeros
    fill: int  # the "unknown" token (N or X): what a shift uncovers


def _make_spec(alphabet: str) -> _Spec:
    letters, codes = ALPHABETS[alphabet], AMBIGUITY[alphabet]
    lut, chars = np.full(256, _INVALID, np.uint8), np.ones(256, np.uint8)
    onehot = np.zeros((len(letters), 256), np.float32)
    for token, symbol in enumerate(letters + "".join(codes)):
        lut[ord(symbol)] = lut[ord(symbol.lower())] = token
        chars[token] = ord(symbol)
        meaning = codes[symbol] if token >= len(letters) else symbol
        onehot[[letters.index(m) for m in meaning], token] = 1 / len(meaning)
    chars[PAD] = 0
    fill = len(letters) + list(codes).index("X" if alphabet == "protein" else "N")
    return _Spec(letters, "".join(codes), lut, chars, onehot, fill)


_SPECS = {name: _make_spec(name) for name in ALPHABETS}
# Token -> complementary token; DNA and RNA share token ids (U is where T is).
_COMPLEMENT = np.arange(256, dtype=np.uint8)
_COMPLEMENT[:15] = _SPECS["dna"].lut[list(b"TGCANYRSWMKVHDB")]


def _spec(alphabet: str) -> _Spec:
    if alphabet not in _SPECS:
        raise ValueError(f"alphabet must be one of {', '.join(_SPECS)}, got {alphabet!r}")
    return _SPECS[alphabet]


# ---- 1. Sources: which sequences make up a dataset -------------------------------------------


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
    except (OSError, UnicodeDecodeError, EOFError) as e:
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


# ---- 2. Sequences <-> tokens -----------------------------------------------------------------


def encode(sequences: list[str], alphabet: str = "dna", *, length: int | None = None,
           ids: list[str] | None = None,
           sources: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode sequences to tokens (module docstring), all at once with a byte lookup table.

    A protein's trailing stop '*' is dropped. Longer sequences are centre-cropped to `length`
    (an odd excess loses one more base on the right), shorter ones right-padded with PAD.

    Args:
        sequences: the sequences, any case.
        alphabet: "dna", "rna" or "protein".
        length: the output length L; None = the longest sequence.
        ids, sources: each sequence's id and location (`SequenceRecords`), for error messages.

    Returns:
        (tokens uint8 (N, L), lengths int64 (N,): the tokens before the padding).

    Raises:
        DataError: a character outside the alphabet and its codes; the message names the first
            such sequence (source, id), the character and its 1-based position.
        ValueError: unknown alphabet, or length < 1.
    """
    spec = _spec(alphabet)
    if length is not None and length < 1:
        raise ValueError(f"length must be None or >= 1, got {length}")
    if alphabet == "protein":
        sequences = [s[:-1] if s.endswith("*") else s for s in sequences]
    sizes = np.fromiter(map(len, sequences), np.int64, len(sequences))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    # "replace" writes one '?' (not a token) per non-ASCII character: offsets stay positions.
    codes = spec.lut[np.frombuffer("".join(sequences).encode("ascii", "replace"), np.uint8)]
    bad = np.flatnonzero(codes == _INVALID)
    if len(bad):
        i = int(np.searchsorted(starts, bad[0], side="right")) - 1
        record = f"record {ids[i]}" if ids else f"sequence {i}"  # i: 0-based list index
        where = f"{sources[i]}: {record}" if sources else record
        position = int(bad[0] - starts[i])
        raise DataError(f"{where}: invalid character {sequences[i][position]!r} at position "
                        f"{position + 1} for {alphabet} (allowed: {spec.letters} or "
                        f"{spec.codes}, any case)")
    n, width = len(sequences), int(sizes.max(initial=0)) if length is None else length
    if n and (sizes == width).all():  # the common case: nothing to crop or pad
        return torch.from_numpy(codes.reshape(n, width)), torch.from_numpy(sizes)
    kept = np.minimum(sizes, width)
    columns = np.arange(width)
    valid = columns < kept[:, None]
    tokens = np.full((n, width), PAD, np.uint8)
    tokens[valid] = codes[(starts[:-1, None] + (sizes - kept)[:, None] // 2 + columns)[valid]]
    return torch.from_numpy(tokens), torch.from_numpy(kept)


def decode(tokens: torch.Tensor, alphabet: str = "dna") -> list[str]:
    """Tokens (B, L) or (L,) back to upper-case strings, PAD dropped: the inverse of `encode`.

    Raises:
        ValueError: unknown alphabet, or a token not in it.
    """
    array = np.atleast_2d(tokens.cpu().numpy())
    chars = _spec(alphabet).chars[array]
    if (chars == 1).any():
        raise ValueError(f"token {array[chars == 1][0]} is not in the {alphabet} alphabet")
    return [row.tobytes().replace(b"\0", b"").decode("ascii") for row in chars]


def one_hot(tokens: torch.Tensor, alphabet: str = "dna") -> torch.Tensor:
    """Tokens (..., L) to float32 (..., A, L): letters one 1, codes a distribution, PAD zeros.

    This and the other token functions run in numpy on the CPU (results go back to the tokens'
    device): on a busy 2-core CPU, torch ops on a batch waited 10-100 ms for torch's intra-op
    threads, numpy took well under a millisecond.
    """
    x = np.take(_spec(alphabet).onehot, tokens.cpu().numpy(), axis=1)  # (A, ..., L)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 0, -2))).to(tokens.device)


def _rc(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse complement the first lengths[i] tokens of each row of (B, L); PAD after them."""
    columns = np.arange(tokens.shape[1])
    source = np.maximum(lengths[:, None] - 1 - columns, 0)
    flipped = _COMPLEMENT[np.take_along_axis(tokens, source, 1)]
    return np.where(columns < lengths[:, None], flipped, PAD).astype(np.uint8)


def reverse_complement(tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse complement DNA/RNA tokens (B, L) or (L,); the padding stays on the right.

    Codes are complemented too (R <-> Y, K <-> M, B <-> V, D <-> H; N, S, W stay).

    Args:
        tokens: right-padded DNA or RNA tokens (protein tokens give nonsense).
        lengths: valid lengths (B,) or a scalar; None = each row's non-PAD count.

    Returns:
        uint8 tokens, shaped as `tokens`.
    """
    t = np.atleast_2d(tokens.cpu().numpy())
    n = (t != PAD).sum(1) if lengths is None else np.atleast_1d(lengths.cpu().numpy())
    return torch.from_numpy(_rc(t, n).reshape(tokens.shape)).to(tokens.device)


def reverse_complement_one_hot(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement one-hot DNA/RNA (B, 4, L): flip letters (ACGT order) and positions.

    Only right for equal-length unpadded batches (padding would move to the left); else use
    `reverse_complement` on the tokens.
    """
    return x.flip((-2, -1))


def _shift(tokens: np.ndarray, lengths: np.ndarray, offsets: np.ndarray,
           fill: int) -> np.ndarray:
    """Move each row's valid part right by offsets[i] (left if < 0) within its length; the
    uncovered positions get `fill`, the padding stays."""
    columns = np.arange(tokens.shape[1])
    source = columns - offsets[:, None]
    inside = (source >= 0) & (source < lengths[:, None])
    moved = np.take_along_axis(tokens, source.clip(0, tokens.shape[1] - 1), 1)
    moved = np.where(inside, moved, fill)
    return np.where(columns < lengths[:, None], moved, PAD).astype(np.uint8)


# ---- 3. Batches ------------------------------------------------------------------------------


class SequenceDataset(Dataset):
    """Token sequences served as augmented, already-stacked batches.

    DataLoader calls `__getitems__` with a batch's indices; use
    `collate_fn=biomx.modalities.image.readers.collate_batch`. As in `ImageTensorDataset`, a batch's
    generator is seeded from (seed, epoch, first index, batch length): the same augmentations
    with any number of workers and after a resume. Call `set_epoch` before each epoch.

    Args:
        tokens: uint8 (N, L) from `encode`, on the CPU.
        targets: (N,) or (N, K).
        alphabet: the tokens' alphabet.
        lengths: valid lengths (N,); None = each row's non-PAD count.
        representation: "onehot": x float32 (B, A, L); "tokens": x int64 (B, L) for an
            embedding of `vocab_size` rows, PAD = the last.
        rc_augment: reverse complement each sample with probability 0.5 (DNA/RNA only).
        shift: move each sample by a uniform offset in [-shift, shift] within its length; the
            uncovered positions become N (protein: X).
        seed: base seed of the augmentation.

    Raises:
        ValueError: bad shapes, dtypes or options; rc_augment for protein.
    """

    def __init__(self, tokens: torch.Tensor, targets: torch.Tensor, *, alphabet: str = "dna",
                 lengths: torch.Tensor | None = None, representation: str = "onehot",
                 rc_augment: bool = False, shift: int = 0, seed: int = 0) -> None:
        self.spec = _spec(alphabet)
        if tokens.ndim != 2 or tokens.dtype != torch.uint8 or len(tokens) != len(targets):
            raise ValueError(f"need uint8 tokens (N, L) and N targets, got {tokens.dtype} "
                             f"{tuple(tokens.shape)} and {len(targets)} targets")
        if representation not in ("onehot", "tokens") or shift < 0:
            raise ValueError(f"representation must be 'onehot' or 'tokens' and shift >= 0, got "
                             f"{representation!r}, {shift}")
        if rc_augment and alphabet == "protein":
            raise ValueError("rc_augment needs DNA or RNA: proteins have no reverse complement")
        self.tokens, self.targets, self.alphabet = tokens, targets, alphabet
        self.lengths = (tokens != PAD).sum(1) if lengths is None else lengths
        self.representation, self.rc_augment, self.shift = representation, rc_augment, shift
        self.seed, self.epoch = seed, 0

    @property
    def vocab_size(self) -> int:
        """Embedding rows for representation="tokens": letters, codes, then PAD."""
        return len(self.spec.letters) + len(self.spec.codes) + 1

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next batches' augmentations."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the batch (x, y) for `indices`, augmented, x as set by `representation`."""
        index = np.asarray(indices, dtype=np.int64)
        tokens, lengths = self.tokens.numpy()[index], self.lengths.numpy()[index]
        if self.shift or self.rc_augment:
            generator = batch_generator(self.seed, self.epoch, indices)
            if self.shift:
                offsets = torch.randint(-self.shift, self.shift + 1, (len(index),),
                                        generator=generator)
                tokens = _shift(tokens, lengths, offsets.numpy(), self.spec.fill)
            if self.rc_augment:
                flip = (torch.rand(len(index), generator=generator) < 0.5).numpy()
                tokens = np.where(flip[:, None], _rc(tokens, lengths), tokens)
        y = self.targets.index_select(0, torch.from_numpy(index))  # see `one_hot` on threads
        if self.representation == "onehot":
            return one_hot(torch.from_numpy(tokens), self.alphabet), y
        x = tokens.astype(np.int64)
        x[x == PAD] = self.vocab_size - 1
        return torch.from_numpy(x), y


# ---- 4. Features for classical baselines -----------------------------------------------------


def kmer_counts(tokens: torch.Tensor, k: int = 5, alphabet: str = "dna") -> np.ndarray:
    """Count each sequence's k-mers; windows with an ambiguity code or PAD are skipped.

    Column j is the k-mer whose letters, as base-A digits in `ALPHABETS` order, spell j (DNA:
    column 0 = "AA..A", 1 = "AA..C").

    Args:
        tokens: uint8 (N, L) from `encode`.
        k: the k-mer length.
        alphabet: the tokens' alphabet (A letters).

    Returns:
        float32 (N, A**k) counts.

    Raises:
        ValueError: k < 1, or more than 2**24 k-mers.
    """
    a = len(_spec(alphabet).letters)
    if k < 1 or a**k > 2**24:
        raise ValueError(f"k must be >= 1 with at most 2**24 k-mers, got k={k} for {alphabet}")
    t = tokens.numpy().astype(np.int64)
    n, windows = len(t), t.shape[1] - k + 1
    out = np.zeros((n, a**k), np.float32)
    if windows <= 0:
        return out
    code, good = np.zeros((n, windows), np.int64), np.ones((n, windows), bool)
    for m in range(k):  # a loop over the k letters of a window, not over positions
        code = code * a + t[:, m:m + windows]
        good &= t[:, m:m + windows] < a
    block = max(1, 2**22 // a**k)  # rows per bincount, bounding its int64 memory
    code += np.arange(n)[:, None] % block * a**k  # each row of a block gets its own bins
    for lo in range(0, n, block):
        rows = min(block, n - lo)
        flat = code[lo:lo + rows][good[lo:lo + rows]]
        out[lo:lo + rows] = np.bincount(flat, minlength=rows * a**k).reshape(rows, a**k)
    return out
