"""Tests for biomx.modalities.sequence (readers, encoding, dataset, kmers), on real ChIP-seq windows (Oct4- and Mafk-bound DNA)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from biomx.data.batching import collate_batch
from biomx.errors import DataError
from biomx.modalities.sequence.dataset import SequenceDataset
from biomx.modalities.sequence.encoding import (
    PAD,
    decode,
    encode,
    one_hot,
    reverse_complement,
    reverse_complement_one_hot,
)
from biomx.modalities.sequence.kmers import kmer_counts
from biomx.modalities.sequence.readers import (
    SequenceRecords,
    parse_interval_id,
    records_from_fasta,
    records_from_intervals,
    records_from_table,
)
from data_paths import DNA

OCT4, MAFK = DNA / "sample.fa", DNA / "sample2.fa"
# An independent reference for the reverse complement: plain Python, IUPAC pairs.
PAIRS = dict(zip("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB", strict=True))


def rc_reference(sequence: str) -> str:
    return "".join(PAIRS[base] for base in reversed(sequence.upper()))


@pytest.fixture(scope="module")
def records() -> SequenceRecords:
    return records_from_fasta({"Oct4": OCT4, "Mafk": MAFK})


def write_fasta(path: Path, entries: list[tuple[str, str]], width: int = 60) -> Path:
    lines = []
    for header, sequence in entries:
        lines.append(f">{header}")
        lines += [sequence[i:i + width] for i in range(0, len(sequence), width)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- sources ---------------------------------------------------------------------------------


def test_fasta_real_files(records):
    assert len(records) == 3897 + 3900
    assert records.labels[:1] == ["Oct4"] and records.labels[-1] == "Mafk"
    assert Counter(records.labels) == {"Oct4": 3897, "Mafk": 3900}
    assert records.ids[0] == "chr1:15710957-15711157"
    assert records.chromosomes[0] == "chr1" and None not in records.chromosomes
    assert {len(s) for s in records.sequences} == {200}
    assert records.sources[1] == f"{OCT4}: line 3"  # record 2's header is on line 3
    assert records.sources[3897] == f"{MAFK}: line 1"
    # Unlabelled, from a list of files.
    plain = records_from_fasta([MAFK], label_from=None)
    assert plain.labels == [None] * 3900 and plain.sequences == records.sequences[3897:]


def test_parse_interval_id():
    assert parse_interval_id("chr8:100-300") == ("chr8", 100, 300)
    assert parse_interval_id("chrX:5-10(-)") == ("chrX", 5, 10)
    assert parse_interval_id("scaffold_12:0-1(+)") == ("scaffold_12", 0, 1)
    for bad in ("chr8", "chr8:300-100", "chr8:1-2-3", "seq1|Oct4", "chr8:a-b"):
        assert parse_interval_id(bad) is None, bad


def test_label_from_header_and_csv(records, tmp_path):
    ids, seqs = records.ids[:6], records.sequences[:6]
    piped = write_fasta(tmp_path / "piped.fa",
                        [(f"{i}|{'Oct4' if k % 2 else 'Mafk'} extra words", s)
                         for k, (i, s) in enumerate(zip(ids, seqs, strict=True))])
    got = records_from_fasta([piped], label_from="header")
    assert got.ids == ids and got.labels == ["Mafk", "Oct4"] * 3 and got.sequences == seqs
    assert got.chromosomes == records.chromosomes[:6]
    keyed = write_fasta(tmp_path / "keyed.fa", [(f"{i} cell=ES label=Oct4", s)
                                                for i, s in zip(ids, seqs, strict=True)])
    assert records_from_fasta([keyed], label_from="header").labels == ["Oct4"] * 6
    bare = write_fasta(tmp_path / "bare.fa", [(ids[0], seqs[0])])
    with pytest.raises(DataError, match=r"bare\.fa: line 1: no label in header"):
        records_from_fasta([bare], label_from="header")

    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{i},{'Oct4|Mafk' if k == 0 else 'Oct4'}\n"
                                             for k, i in enumerate(ids)))
    plain = write_fasta(tmp_path / "plain.fa", list(zip(ids, seqs, strict=True)))
    got = records_from_fasta([plain], label_from="csv", labels_csv=labels)
    assert got.labels == [["Oct4", "Mafk"]] + [["Oct4"]] * 5  # "a|b" makes it multilabel
    labels.write_text("id,label\n" + "".join(f"{i},Oct4\n" for i in ids[1:]))
    with pytest.raises(DataError, match=rf"plain\.fa: line 1: record '{ids[0]}' has no label"):
        records_from_fasta([plain], label_from="csv", labels_csv=labels)
    with pytest.raises(ValueError, match="label_from='file'"):
        records_from_fasta([plain])


def test_multiline_fasta_and_bad_files(records, tmp_path):
    seqs = records.sequences[:3]
    wrapped = write_fasta(tmp_path / "wrapped.fa", [("a", seqs[0] + seqs[1]), ("b", seqs[2])],
                          width=70)
    wrapped.write_text(wrapped.read_text().replace("\n>b", "\n\n>b"))  # a blank line between
    got = records_from_fasta({"x": wrapped})
    assert got.ids == ["a", "b"] and got.sequences == [seqs[0] + seqs[1], seqs[2]]
    assert got.sources == [f"{wrapped}: line 1", f"{wrapped}: line 9"]
    assert got.chromosomes == [None, None]

    bad = tmp_path / "bad.fa"
    bad.write_text(f"{seqs[0]}\n>a\n{seqs[1]}\n")
    with pytest.raises(DataError, match=r"bad\.fa: line 1: sequence before the first '>'"):
        records_from_fasta({"x": bad})
    bad.write_text("")
    with pytest.raises(DataError, match=r"bad\.fa: no FASTA records"):
        records_from_fasta({"x": bad})
    bad.write_text(f">a\n{seqs[0]}\n>b\n>c\n{seqs[1]}\n")
    with pytest.raises(DataError, match=r"bad\.fa: line 3: record 'b' has no sequence"):
        records_from_fasta({"x": bad})
    with pytest.raises(DataError, match=r"missing\.fa: cannot read"):
        records_from_fasta({"x": tmp_path / "missing.fa"})


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t"), (".txt", "\t")])
def test_table_sources(records, tmp_path, suffix, sep):
    rows = [sep.join(["id", "sequence", "label"])]
    rows += [sep.join([i, s, lab]) for i, s, lab in
             zip(records.ids[:5], records.sequences[:5], records.labels[:5], strict=True)]
    table = tmp_path / f"t{suffix}"
    table.write_text("\n".join(rows) + "\n")
    got = records_from_table(table)
    assert got.ids == records.ids[:5] and got.sequences == records.sequences[:5]
    assert got.labels == ["Oct4"] * 5 and got.chromosomes == records.chromosomes[:5]
    assert got.sources[0] == f"{table}: row 2"
    no_ids = records_from_table(table, id_column=None, label_column=None)
    assert no_ids.ids[0] == "row2" and no_ids.labels == [None] * 5
    with pytest.raises(DataError, match=rf"t\{suffix}: missing column 'seq' \(columns found: "
                                        r"id, sequence, label\)"):
        records_from_table(table, sequence_column="seq")
    rows[3] = sep.join([records.ids[2], "", "Oct4"])
    table.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"t\{suffix}: row 4: empty 'sequence'"):
        records_from_table(table)


# ---- intervals from a genome -----------------------------------------------------------------


@pytest.fixture(scope="module")
def genome(records, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A small genome of real DNA: 50 Oct4 windows as chrT, 30 Mafk windows as chrU."""
    contigs = {"chrT": "".join(records.sequences[:50]),
               "chrU": "".join(records.sequences[4000:4030])}
    path = write_fasta(tmp_path_factory.mktemp("genome") / "genome.fa", list(contigs.items()))
    return path, contigs


def test_intervals_bed(genome, tmp_path):
    path, contigs = genome
    bed = tmp_path / "peaks.bed"
    bed.write_text("track name=peaks\n"
                   "chrT\t1000\t1200\tOct4\t0\t+\n"
                   "chrU\t3000\t3200\tMafk\t0\t-\n"
                   "chrT\t9790\t9990\tOct4\t0\t.\n")
    got = records_from_intervals(bed, path, flank=10)
    t, u = contigs["chrT"], contigs["chrU"]
    assert got.sequences == [t[990:1210], rc_reference(u[2990:3210]), t[9780:10000]]
    assert got.labels == ["Oct4", "Mafk", "Oct4"]
    assert got.ids == ["chrT:1000-1200(+)", "chrU:3000-3200(-)", "chrT:9790-9990(.)"]
    assert got.chromosomes == ["chrT", "chrU", "chrT"]
    assert got.sources[1] == f"{bed}: line 3"
    assert Path(f"{path}.fai").is_file()  # built on first use
    unstranded = records_from_intervals(bed, path, strand_column=None)
    assert unstranded.sequences[1] == u[3000:3200]

    bed.write_text("chrT\t1000\t1200\tOct4\n" "chrT\t9900\t10001\tOct4\n")
    with pytest.raises(DataError, match=r"peaks\.bed: line 2: window chrT:9900-10001 .* past"):
        records_from_intervals(bed, path)
    bed.write_text("chrT\t1000\t1200\tOct4\n" "chrT\t5\t200\tOct4\n")
    with pytest.raises(DataError, match=r"peaks\.bed: line 2: window chrT:-5-210"):
        records_from_intervals(bed, path, flank=10)
    bed.write_text("chr1\t1000\t1200\tOct4\n")
    with pytest.raises(DataError, match=r"peaks\.bed: line 1: chromosome 'chr1' is not in"):
        records_from_intervals(bed, path)
    bed.write_text("chrT\t1200\t1000\tOct4\n")
    with pytest.raises(DataError, match=r"line 1: expected chrom, start, end with 0 <= start"):
        records_from_intervals(bed, path)


def test_intervals_with_header(genome, tmp_path):
    path, contigs = genome
    table = tmp_path / "peaks.csv"
    table.write_text("chrom,start,end,strand,label\nchrU,0,200,-,Mafk\nchrT,400,600,,Oct4\n")
    got = records_from_intervals(table, path)
    assert got.sequences == [rc_reference(contigs["chrU"][:200]), contigs["chrT"][400:600]]
    assert got.labels == ["Mafk", "Oct4"] and got.sources[1] == f"{table}: line 3"
    bed = tmp_path / "peaks.bed"
    bed.write_text("#chrom\tstart\tend\tkind\nchrT\t400\t600\tOct4\n")
    assert records_from_intervals(bed, path, label_column="kind").labels == ["Oct4"]
    with pytest.raises(DataError, match=r"missing column 'label' \(columns found: chrom, start, "
                                        r"end, kind\)"):
        records_from_intervals(bed, path)


# ---- encoding --------------------------------------------------------------------------------


def test_encode_decode_round_trip(records):
    rng = random.Random(0)
    sequences = []
    for s in records.sequences[:300]:
        s = list(s[:rng.randint(1, 200)])
        for _ in range(3):  # sprinkle ambiguity codes and soft-masked bases
            s[rng.randrange(len(s))] = rng.choice("NRYnswkmbdhv")
        sequences.append("".join(s))
    tokens, lengths = encode(sequences)
    assert tokens.dtype == torch.uint8 and tokens.shape == (300, max(map(len, sequences)))
    assert lengths.tolist() == [len(s) for s in sequences]
    assert decode(tokens) == [s.upper() for s in sequences]
    assert (tokens[0, lengths[0]:] == PAD).all() and (tokens[tokens != PAD] < 15).all()
    assert encode(["ACGTNRYSWKMBDHV"])[0][0].tolist() == list(range(15))
    # Centre crop: an excess of 5 drops 2 bases on the left and 3 on the right.
    cropped, kept = encode(records.sequences[:20], length=195)
    assert decode(cropped) == [s[2:197].upper() for s in records.sequences[:20]]
    assert kept.tolist() == [195] * 20
    rna, _ = encode(["ACGUN"], "rna")
    assert decode(rna, "rna") == ["ACGUN"] and rna[0].tolist() == [0, 1, 2, 3, 4]


def test_invalid_character_names_record_and_position(records):
    sequences = records.sequences[:3]
    sequences[2] = sequences[2][:16] + "Z" + sequences[2][17:]
    with pytest.raises(DataError) as error:
        encode(sequences, ids=records.ids[:3], sources=records.sources[:3])
    assert str(error.value).startswith(f"{OCT4}: line 5: record {records.ids[2]}: invalid "
                                       "character 'Z' at position 17 for dna")
    for bad, shown in (("ACGT-A", "'-' at position 5"), ("ACGU", "'U' at position 4"),
                       ("ACµT", "'µ' at position 3"), ("ACGT*", "'*' at position 5")):
        with pytest.raises(DataError, match=re.escape(f"sequence 1: invalid character {shown}")):
            encode(["ACGT", bad])


def test_protein_encoding(records):
    # Real protein: translate a real DNA window with the standard genetic code.
    code = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
    table = {"".join(c): aa for c, aa in zip(product("TCAG", repeat=3), code, strict=True)}
    dna = records.sequences[0].upper()
    protein = "".join(table[dna[i:i + 3]] for i in range(0, 198, 3)).replace("*", "X") + "*"
    tokens, lengths = encode([protein, "BZJUOx"], "protein")
    assert lengths.tolist() == [66, 6]  # the trailing stop is dropped
    assert decode(tokens, "protein") == [protein[:-1], "BZJUOX"]
    x = one_hot(tokens, "protein")
    assert x.shape == (2, 20, 66) and torch.allclose(x[:, :, :6].sum(1), torch.ones(2, 6))
    assert torch.allclose(x[1, :, 5], torch.full((20,), 0.05))  # X: uniform
    assert x[1, :, 0].nonzero().flatten().tolist() == [2, 11]  # B: D or N, 0.5 each
    with pytest.raises(DataError, match="'\\*' at position 3 for protein"):
        encode(["MK*L"], "protein")
    with pytest.raises(ValueError, match="rc_augment"):
        SequenceDataset(tokens, torch.zeros(2), alphabet="protein", rc_augment=True)


def test_one_hot(records):
    tokens, _ = encode([records.sequences[0][:50], "ACGTNRnr"])
    x = one_hot(tokens)
    assert x.shape == (2, 4, 50) and x.dtype == torch.float32
    assert (x[0].sum(0) == 1).all() and set(x[0].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x[1, :, :4], torch.eye(4))
    assert x[1, :, 4].tolist() == [0.25] * 4 and x[1, :, 6].tolist() == [0.25] * 4  # N, n
    assert x[1, :, 5].tolist() == [0.5, 0, 0.5, 0] and x[1, :, 7].tolist() == [0.5, 0, 0.5, 0]
    assert (x[1, :, 8:] == 0).all()  # PAD


def test_reverse_complement_matches_python(records):
    rng = random.Random(1)
    picks = rng.sample(records.sequences, 64)
    sequences = [s[:rng.randint(150, 200)] + rng.choice(["", "NRYKMBV", "swdh"]) for s in picks]
    tokens, lengths = encode(sequences)
    rc = reverse_complement(tokens, lengths)
    assert decode(rc) == [rc_reference(s) for s in sequences]
    assert torch.equal(rc == PAD, tokens == PAD)  # padding stays on the right
    assert torch.equal(reverse_complement(tokens), rc)  # lengths inferred from PAD
    assert torch.equal(reverse_complement(rc), tokens)
    assert torch.equal(reverse_complement(tokens[0], lengths[0]), rc[0])
    full, _ = encode(records.sequences[:8])
    assert torch.equal(reverse_complement_one_hot(one_hot(full)),
                       one_hot(reverse_complement(full)))


# ---- batches ---------------------------------------------------------------------------------


def test_dataset_determinism_and_rc_augment(records):
    tokens, lengths = encode(records.sequences[3800:4000])
    targets = torch.tensor([label == "Oct4" for label in records.labels[3800:4000]]).float()
    data = SequenceDataset(tokens, targets, rc_augment=True, seed=3)
    batch = list(range(200))
    x1, y1 = data.__getitems__(batch)
    x2, _ = data.__getitems__(batch)
    assert x1.shape == (200, 4, 200) and torch.equal(x1, x2) and torch.equal(y1, targets)
    plain, flipped = one_hot(tokens), one_hot(reverse_complement(tokens))
    is_plain = (x1 == plain).flatten(1).all(1)
    is_rc = (x1 == flipped).flatten(1).all(1)
    assert (is_plain ^ is_rc).all()  # each sample is exactly itself or its RC
    assert 70 <= int(is_rc.sum()) <= 130
    data.set_epoch(1)
    x3, _ = data.__getitems__(batch)
    assert not torch.equal(x1, x3)
    data.set_epoch(0)
    loader = DataLoader(data, batch_size=50, shuffle=False, collate_fn=collate_batch)
    assert torch.equal(torch.cat([x for x, _ in loader]),
                       torch.cat([data.__getitems__(list(range(i, i + 50)))[0]
                                  for i in range(0, 200, 50)]))
    x, y = data[5]
    assert x.shape == (4, 200) and y == targets[5]


def test_dataset_shift_and_tokens(records):
    sequences = [s[:120 + i] for i, s in enumerate(records.sequences[:40])]
    tokens, lengths = encode(sequences)
    data = SequenceDataset(tokens, torch.zeros(40), shift=3, representation="tokens", seed=0)
    x, _ = data.__getitems__(list(range(40)))
    assert data.vocab_size == 16 and x.dtype == torch.int64 and x.shape == tokens.shape
    assert torch.equal(x == 15, tokens == PAD)  # PAD -> the last embedding row, still on the right
    moved = 0
    for row, sequence, n in zip(x, sequences, lengths.tolist(), strict=True):
        text = "".join("ACGTN"[t] for t in row[:n].tolist())
        s = sequence.upper()
        offsets = [d for d in range(-3, 4)
                   if text == ("N" * d + s[:n - d] if d >= 0 else s[-d:] + "N" * -d)]
        assert offsets, (text, s)
        moved += offsets != [0]
    assert moved > 20  # 6 in 7 samples move


def test_kmer_counts_match_counter(records):
    sequences = [records.sequences[0][:60], records.sequences[1][:40] + "N" + "ACGTA", "ACG"]
    tokens, _ = encode(sequences)
    counts = kmer_counts(tokens, k=3)
    names = ["".join(p) for p in product("ACGT", repeat=3)]
    assert counts.shape == (3, 64) and counts.dtype == np.float32
    for row, sequence in zip(counts, sequences, strict=True):
        s = sequence.upper()
        naive = Counter(s[i:i + 3] for i in range(len(s) - 2) if "N" not in s[i:i + 3])
        assert dict(zip(names, row.tolist(), strict=True)) == {n: naive.get(n, 0) for n in names}
    big = kmer_counts(encode(records.sequences[:300])[0], k=5)
    assert big.shape == (300, 1024) and (big.sum(1) == 196).all()


def test_encode_speed(records):
    start = time.perf_counter()
    tokens, _ = encode(records.sequences, ids=records.ids, sources=records.sources)
    seconds = time.perf_counter() - start
    print(f"\nencode: {len(records)} x 200 bp in {seconds * 1000:.1f} ms")
    assert tokens.shape == (7797, 200)
