"""Variant effect prediction: score SNVs and short indels with a DNA sequence model.

1. `read_variants` reads a VCF (plain or gzipped) or a CSV/TSV with chrom, pos, ref, alt.
2. `variant_windows` cuts a reference and an alternative window of fixed length around each
   variant from an indexed genome FASTA, checking the genome against the stated REF.
3. `score_variants` predicts both windows and reports the change in probability.
4. `write_variant_scores` writes one CSV row per input variant: scored ones with their
   numbers, skipped ones with the reason.

Variants that cannot be scored (symbolic alleles, reference mismatches, unknown contigs,
windows past a chromosome end) are never raised: they come back as "problems", dicts with
id, source, reason, chrom, pos, ref and alt, so a batch of thousands is not stopped by one.
Malformed lines are errors (`DataError` naming file and line): the file itself is broken.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyfaidx
import torch
from torch import Tensor, nn

from biomx.engine.checkpoint import atomic_write_text
from biomx.errors import BiomxError, DataError

_BASES = re.compile(r"^[ACGTN]+$")
_COLUMNS = ("id", "chrom", "pos", "ref", "alt", "p_ref", "p_alt", "delta", "log_odds_ratio",
            "source", "problem")


@dataclass(frozen=True)
class Variant:
    """One ALT allele at one position; `pos` is 1-based as in VCF, `source` is "file:line"."""

    chrom: str
    pos: int
    ref: str
    alt: str
    id: str
    source: str


@dataclass
class VariantWindows:
    """Reference and alternative windows of the variants that can be scored.

    `kept[i]` has windows `ref[i]` and `alt[i]`; `problems` lists those that cannot be
    scored, as dicts with id, source, reason, chrom, pos, ref, alt.
    """

    kept: list[Variant] = field(default_factory=list)
    ref: list[str] = field(default_factory=list)
    alt: list[str] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)


def _problem(variant: Variant, reason: str) -> dict:
    return {"id": variant.id, "source": variant.source, "reason": reason,
            "chrom": variant.chrom, "pos": variant.pos, "ref": variant.ref, "alt": variant.alt}


def _read_lines(path: Path) -> list[str]:
    """All lines of a text file, gunzipped if it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{path}: cannot read variants: {reason}") from e


def _parse(path: Path, line: int, chrom: str, pos: str, vid: str, ref: str,
           alts: str) -> tuple[list[Variant], list[dict]]:
    """The variants of one record (one per ALT allele) and the alleles skipped, with why."""
    where = f"{path}: line {line}"
    chrom, pos, vid, ref = chrom.strip(), pos.strip(), vid.strip(), ref.strip().upper()
    if not chrom:
        raise DataError(f"{where}: empty chromosome")
    if not pos.isdigit() or int(pos) < 1:
        raise DataError(f"{where}: POS must be a positive integer (1-based), got {pos!r}")
    if not _BASES.match(ref):
        raise DataError(f"{where}: REF must be bases A, C, G, T or N, got {ref!r}")
    variants, skipped = [], []
    for alt in alts.strip().upper().split(","):
        name = vid if vid not in ("", ".") else f"{chrom}:{pos}:{ref}>{alt}"
        variant = Variant(chrom, int(pos), ref, alt, name, f"{path.name}:{line}")
        if alt in ("", ".", "*") or alt.startswith("<") or "[" in alt or "]" in alt:
            # Symbolic (<DEL>), spanning-deletion (*) and breakend alleles have no sequence.
            skipped.append(_problem(variant, f"symbolic or structural allele {alt or '.'!r} "
                                             "is not scored"))
        elif not _BASES.match(alt):
            raise DataError(f"{where}: ALT must be bases A, C, G, T, N (comma-separated), "
                            f"got {alts.strip()!r}")
        elif alt == ref:
            skipped.append(_problem(variant, "ALT equals REF"))
        else:
            variants.append(variant)
    return variants, skipped


def read_variants(path: str | Path) -> tuple[list[Variant], list[dict]]:
    """Read variants from a VCF (plain or .gz) or a CSV/TSV with chrom, pos, ref, alt[, id].

    A file is read as VCF if its name ends in .vcf / .vcf.gz or it starts with a "##" or
    "#CHROM" header; header lines are skipped and only CHROM, POS, ID, REF, ALT are used.
    Multi-allelic records ("A,T") give one variant per ALT. A table's delimiter comes from
    its extension (.csv, .tsv, .tab) or its header line; header names are case-insensitive
    (a leading "#", as in "#chrom", is ignored).

    Args:
        path: the variant file.

    Returns:
        (variants in file order, skipped alleles): skipped are symbolic or structural alleles
        (<DEL>, *, breakends) and ALT == REF, as problem dicts with id, source, reason, chrom,
        pos, ref, alt.

    Raises:
        DataError: unreadable file, missing table column, a malformed line (file and line
            named), or a file without any variant record.
    """
    path = Path(path)
    lines = _read_lines(path)
    first = next((line for line in lines if line.strip()), "")
    is_vcf = path.name.lower().endswith((".vcf", ".vcf.gz")) or first.startswith(("##", "#CHROM"))
    variants: list[Variant] = []
    skipped: list[dict] = []
    records = 0
    if is_vcf:
        for n, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 5:
                raise DataError(f"{path}: line {n}: expected at least 5 tab-separated VCF "
                                f"columns (CHROM POS ID REF ALT), got {len(fields)}")
            kept, dropped = _parse(path, n, *fields[:5])
            variants.extend(kept)
            skipped.extend(dropped)
            records += 1
    else:
        suffix = Path(path.name.lower().removesuffix(".gz")).suffix
        delimiter = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(
            suffix, "\t" if first.count("\t") > first.count(",") else ",")
        reader = csv.reader(lines, delimiter=delimiter)
        header = [name.strip().lstrip("#").lower() for name in next(reader, [])]  # "#chrom"
        missing = [c for c in ("chrom", "pos", "ref", "alt") if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)} (columns found: "
                            f"{', '.join(header) or 'none'}); expected chrom, pos, ref, alt[, id]")
        col = {name: header.index(name) for name in ("chrom", "pos", "ref", "alt", "id")
               if name in header}
        for row in reader:
            n = reader.line_num  # the physical line, even after a quoted multi-line cell
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise DataError(f"{path}: line {n}: expected {len(header)} columns, "
                                f"got {len(row)}")
            kept, dropped = _parse(path, n, row[col["chrom"]], row[col["pos"]],
                                   row[col["id"]] if "id" in col else "", row[col["ref"]],
                                   row[col["alt"]])
            variants.extend(kept)
            skipped.extend(dropped)
            records += 1
    if records == 0:
        raise DataError(f"{path}: no variant records (empty file, or only header lines?)")
    return variants, skipped


def variant_windows(variants: list[Variant], genome: str | Path, *,
                    length: int = 200) -> VariantWindows:
    """Cut reference and alternative windows of `length` bases around each variant.

    The first REF base sits at index length // 2 of both windows. The alternative window is
    left flank + ALT + the genome after REF, cut to `length`, so indels keep the length.
    Windows are upper case. The genome's .fai index is built next to it if missing.

    Args:
        variants: from `read_variants`.
        genome: an uncompressed (or bgzipped) genome FASTA.
        length: window length in bases.

    Returns:
        VariantWindows; a variant on an unknown chromosome, whose window runs past the
        chromosome's ends, or whose REF differs from the genome (case-insensitive) is not
        kept but listed in `problems` with the reason, e.g. "reference mismatch: VCF says A,
        genome has G at chr1:12345".

    Raises:
        DataError: if the genome FASTA cannot be read or indexed.
        BiomxError: if length < 1.
    """
    if length < 1:
        raise BiomxError(f"window length must be >= 1, got {length}")
    genome = Path(genome)
    if not genome.is_file():
        raise DataError(f"{genome}: genome FASTA not found")
    left = length // 2
    windows = VariantWindows()
    try:
        with pyfaidx.Fasta(str(genome), as_raw=True, sequence_always_upper=True) as fasta:
            for v in variants:
                if v.chrom not in fasta:
                    known = ", ".join(list(fasta.keys())[:5])
                    windows.problems.append(_problem(v, f"unknown chromosome {v.chrom!r} "
                                                        f"(genome has {known}, ...)"))
                    continue
                size, start, end = len(fasta[v.chrom]), v.pos - 1, v.pos - 1 + len(v.ref)
                # The alt window reads past REF what the alt allele does not fill.
                alt_end = end + max(0, length - left - len(v.alt))
                if start - left < 0 or max(start - left + length, alt_end) > size:
                    windows.problems.append(_problem(
                        v, f"a {length} bp window around {v.chrom}:{v.pos} runs past the "
                           f"chromosome's ends (length {size})"))
                    continue
                observed = fasta[v.chrom][start:end]
                if observed != v.ref:
                    windows.problems.append(_problem(
                        v, f"reference mismatch: VCF says {v.ref}, genome has {observed} at "
                           f"{v.chrom}:{v.pos}"))
                    continue
                ref_seq = fasta[v.chrom][start - left:start - left + length]
                alt_seq = ref_seq[:left] + v.alt + fasta[v.chrom][end:alt_end]
                windows.kept.append(v)
                windows.ref.append(ref_seq)
                windows.alt.append(alt_seq[:length])
    except (OSError, ValueError, pyfaidx.FastaIndexingError) as e:
        raise DataError(f"{genome}: cannot read genome FASTA: {' '.join(str(e).split())}") from e
    return windows


def _probabilities(logits: Tensor, target: int) -> Tensor:
    """Sigmoid of a single logit, else softmax over the outputs; the target's column."""
    if logits.dim() != 2 or not 0 <= target < logits.shape[1]:
        raise BiomxError(f"cannot score target {target}: the model returned logits of shape "
                         f"{tuple(logits.shape)}, expected (B, K) with K > {target}")
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0].double())
    return torch.softmax(logits.double(), dim=1)[:, target]


def _predict(model: nn.Module, sequences: list[str], encode_fn: Callable[[list[str]], Tensor],
             batch_size: int, strand_average: bool, target: int,
             device: torch.device) -> np.ndarray:
    probs = []
    for lo in range(0, len(sequences), batch_size):
        chunk = sequences[lo:lo + batch_size]
        x = torch.as_tensor(encode_fn(chunk)).float().to(device)
        if x.dim() != 3 or x.shape[0] != len(chunk) or x.shape[1] != 4:
            raise BiomxError(f"encode_fn must return one-hot DNA (N, 4, L) for N = {len(chunk)} "
                             f"sequences, got {tuple(x.shape)}")
        p = _probabilities(model(x), target)
        if strand_average:
            # Flipping both axes reverse complements one-hot ACGT (A<->T, C<->G are mirrors).
            p = (p + _probabilities(model(x.flip(dims=(1, 2))), target)) / 2
        probs.append(p.cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros(0)


def score_variants(model: nn.Module, windows: VariantWindows, *,
                   encode_fn: Callable[[list[str]], Tensor], batch_size: int = 256,
                   strand_average: bool = True, target: int = 0) -> list[dict]:
    """Predict the reference and alternative window of each kept variant.

    Probabilities: sigmoid of the logit for a single-logit (binary) model, softmax over the
    outputs for a multi-class model, taking column `target`. With `strand_average` each
    probability is the mean over the window and its reverse complement (a TF binds either
    strand, so this removes the strand a model happens to prefer).

    Args:
        model: maps (B, 4, L) one-hot DNA to (B, K) logits; run in eval mode, then restored.
        windows: from `variant_windows`.
        encode_fn: list of N sequences -> (N, 4, L) float one-hot tensor (ACGT order), e.g.
            `lambda s: one_hot(encode(s, "dna")[0])` from `biomx.modalities.sequence.encoding`.
        batch_size: windows per forward pass.
        strand_average: also predict the reverse complements and average.
        target: output column of a multi-class model (0 for a binary model).

    Returns:
        One dict per kept variant: id, chrom, pos, ref, alt, p_ref, p_alt, delta
        (p_alt - p_ref), log_odds_ratio (logit(p_alt) - logit(p_ref), probabilities clipped
        to [1e-7, 1 - 1e-7] so it stays finite) and source.

    Raises:
        BiomxError: if encode_fn or the model return the wrong shapes, or target is invalid.
    """
    if not windows.kept:
        return []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            args = (encode_fn, batch_size, strand_average, target, device)
            p_ref = _predict(model, windows.ref, *args)
            p_alt = _predict(model, windows.alt, *args)
    finally:
        for module, training in was_training.items():
            module.training = training
    clipped_ref, clipped_alt = (np.clip(p, 1e-7, 1 - 1e-7) for p in (p_ref, p_alt))
    log_odds = (np.log(clipped_alt / (1 - clipped_alt))
                - np.log(clipped_ref / (1 - clipped_ref)))
    return [{"id": v.id, "chrom": v.chrom, "pos": v.pos, "ref": v.ref, "alt": v.alt,
             "p_ref": float(pr), "p_alt": float(pa), "delta": float(pa - pr),
             "log_odds_ratio": float(lor), "source": v.source}
            for v, pr, pa, lor in zip(windows.kept, p_ref, p_alt, log_odds, strict=True)]


def write_variant_scores(rows: list[dict], problems: list[dict], path: str | Path) -> None:
    """Write scores and problems to one CSV, atomically (a temporary file, then rename).

    Columns: id, chrom, pos, ref, alt, p_ref, p_alt, delta, log_odds_ratio, source, problem.
    Scored variants come first with an empty `problem`; then each problem with empty scores
    and its reason, so every input allele is accounted for.

    Args:
        rows: from `score_variants`.
        problems: from `read_variants` (skipped) and `variant_windows` (problems).
        path: the CSV file to write; its folder is created if needed.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for row in rows:
        writer.writerow([f"{row[c]:.6g}" if isinstance(row.get(c), float) else row.get(c, "")
                         for c in _COLUMNS])
    for problem in problems:
        writer.writerow([problem.get("reason", "") if c == "problem" else problem.get(c, "")
                         for c in _COLUMNS])
    atomic_write_text(Path(path), buffer.getvalue())
