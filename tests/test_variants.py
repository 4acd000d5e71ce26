"""Variant effect prediction: reading VCF/CSV, cutting windows from a genome, scoring, writing.

The genome is built from real Oct4 and Mafk ChIP-seq windows, with the Oct4 octamer planted
once; the model is a hand-built octamer detector, so a variant that breaks the octamer must
score a large drop and one beside it none.
"""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from biomx.errors import BiomxError, DataError
from biomx.modalities.sequence.variants import (
    Variant,
    read_variants,
    score_variants,
    variant_windows,
    write_variant_scores,
)
from motif_helpers import OCT4, OCT4_RC, motif_model, read_fasta, to_one_hot

MOTIF_AT = 1020  # 0-based start of the planted octamer on chrA








def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def other(base: str) -> str:
    """A base different from `base`."""
    return "C" if base.upper() == "A" else "A"


def alts(base: str) -> list[str]:
    """Two bases different from `base`: the ALTs of a multi-allelic record."""
    return [x for x in "ACGT" if x != base.upper()][:2]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add overhead (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """chrA: 10 real Oct4 windows (2000 bp, soft-masked parts kept) with the octamer at
    MOTIF_AT; chrB: 10 real Mafk windows. Written as a 60-column FASTA."""
    def has_motif(seq: str) -> bool:
        return OCT4 in seq.upper() or OCT4_RC in seq.upper()

    def contig(name: str) -> str:
        """10 windows joined, skipping any window that has (or joins into) an octamer."""
        seq = ""
        for window in read_fasta(name):
            if len(seq) < 2000 and not has_motif(seq + window):
                seq += window
        return seq

    chr_a, chr_b = contig("sample.fa"), contig("sample2.fa")
    chr_a = chr_a[:MOTIF_AT] + OCT4 + chr_a[MOTIF_AT + 8:]
    contigs = {"chrA": chr_a, "chrB": chr_b}
    assert len(chr_a) == len(chr_b) == 2000 and not has_motif(chr_b)
    assert sum(chr_a.upper().count(m) for m in (OCT4, OCT4_RC)) == 1
    path = tmp_path_factory.mktemp("genome") / "genome.fa"
    with open(path, "w") as f:
        for name, seq in contigs.items():
            f.write(f">{name} test contig\n")
            f.writelines(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
    return path, contigs


def vcf_records(contigs: dict[str, str]) -> list[tuple[str, int, str, str, str]]:
    """(chrom, pos, id, ref, alt) of the test VCF, in file order."""
    a, b = contigs["chrA"], contigs["chrB"]
    soft = next(i for i in range(150, 1800) if a[i].islower() and abs(i - MOTIF_AT) > 120)
    return [
        ("chrA", MOTIF_AT + 4, "rsBreak", a[MOTIF_AT + 3].upper(), other(a[MOTIF_AT + 3])),
        ("chrA", MOTIF_AT + 61, "rsNear", a[MOTIF_AT + 60].upper(), other(a[MOTIF_AT + 60])),
        ("chrA", soft + 1, "rsSoft", a[soft].upper(), other(a[soft])),
        ("chrA", 501, "rsWrong", other(a[500]), a[500].upper()),
        ("chrZ", 100, "rsUnknown", "A", "G"),
        ("chrB", 701, "rsMulti", b[700].upper(), ",".join(alts(b[700]))),
        ("chrB", 801, "rsSV", b[800].upper(), "<DEL>"),
        ("chrA", 301, "rsDel", a[300:303].upper(), a[300].upper()),
        ("chrA", 401, "rsIns", a[400].upper(), a[400].upper() + "GGG"),
        ("chrB", 1951, "rsEdge", b[1950].upper(), other(b[1950])),
        ("chrB", 1201, ".", b[1200].upper(), other(b[1200])),
    ]


def write_vcf(path: Path, records: list[tuple[str, int, str, str, str]]) -> Path:
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=chrA,length=2000>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines += [f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t." for c, p, i, r, a in records]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def vcf(genome, tmp_path_factory) -> Path:
    return write_vcf(tmp_path_factory.mktemp("vcf") / "variants.vcf", vcf_records(genome[1]))


def test_read_vcf_splits_multiallelic_alleles_and_skips_symbolic_ones(vcf, genome):
    variants, skipped = read_variants(vcf)
    b = genome[1]["chrB"]
    assert [v.id for v in variants] == ["rsBreak", "rsNear", "rsSoft", "rsWrong", "rsUnknown",
                                        "rsMulti", "rsMulti", "rsDel", "rsIns", "rsEdge",
                                        f"chrB:1201:{b[1200].upper()}>{other(b[1200])}"]
    multi = [v for v in variants if v.id == "rsMulti"]
    assert [v.alt for v in multi] == alts(b[700])
    assert multi[0].source == "variants.vcf:9" and multi[0].pos == 701
    assert len(skipped) == 1 and skipped[0]["id"] == "rsSV"
    assert "<DEL>" in skipped[0]["reason"] and skipped[0]["source"] == "variants.vcf:10"
    # The same file gzipped reads the same.
    gz = vcf.with_name("variants.vcf.gz")
    gz.write_bytes(gzip.compress(vcf.read_bytes()))
    again, _ = read_variants(gz)
    assert [(v.chrom, v.pos, v.ref, v.alt, v.id) for v in again] == [
        (v.chrom, v.pos, v.ref, v.alt, v.id) for v in variants]
    assert again[0].source == "variants.vcf.gz:4"


def test_read_csv_and_tsv_tables(tmp_path):
    csv_path = tmp_path / "variants.csv"
    csv_path.write_text("ID,Alt,Ref,Pos,Chrom\nrs1,T,C,15,chr1\nrs2,\"A,G\",t,20,chr2\n\n")
    variants, skipped = read_variants(csv_path)
    assert variants == [Variant("chr1", 15, "C", "T", "rs1", "variants.csv:2"),
                        Variant("chr2", 20, "T", "A", "rs2", "variants.csv:3"),
                        Variant("chr2", 20, "T", "G", "rs2", "variants.csv:3")]
    assert skipped == []
    tsv_path = tmp_path / "variants.tsv"
    tsv_path.write_text("#chrom\tpos\tref\talt\nchr1\t15\tC\tC\nchr1\t16\tG\tA\n")
    variants, skipped = read_variants(tsv_path)
    assert [v.id for v in variants] == ["chr1:16:G>A"]  # no id column: made from the allele
    assert skipped[0]["reason"] == "ALT equals REF"


@pytest.mark.parametrize("line, message", [
    ("chr1\t12x\trs1\tA\tG", r"bad\.vcf: line 3: POS must be a positive integer.*'12x'"),
    ("chr1\t12\trs1\tA", r"bad\.vcf: line 3: expected at least 5 tab-separated"),
    ("chr1\t12\trs1\tA\tAXT", r"bad\.vcf: line 3: ALT must be bases"),
    ("chr1\t12\trs1\t-\tG", r"bad\.vcf: line 3: REF must be bases"),
])
def test_malformed_vcf_line_raises_data_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.vcf"
    path.write_text(f"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n{line}\nchr1\t5\t.\tA\tC\n")
    with pytest.raises(DataError, match=message):
        read_variants(path)


def test_table_without_required_columns_or_records_raises(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("chrom,pos,ref\nchr1,5,A\n")
    with pytest.raises(DataError, match=r"v\.csv: missing column\(s\) alt"):
        read_variants(path)
    path.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\n")
    with pytest.raises(DataError, match="no variant records"):
        read_variants(path)
    with pytest.raises(DataError, match="cannot read variants"):
        read_variants(tmp_path / "missing.vcf")


def test_variant_windows_are_centred_and_problems_are_reported_not_raised(vcf, genome):
    path, contigs = genome
    a = contigs["chrA"].upper()
    variants, _ = read_variants(vcf)
    windows = variant_windows(variants, path, length=200)
    assert path.with_suffix(".fa.fai").is_file()  # index built on first use
    kept = {v.id: (v, r, x) for v, r, x in zip(windows.kept, windows.ref, windows.alt,
                                               strict=True)}
    assert set(kept) == {"rsBreak", "rsNear", "rsSoft", "rsMulti", "rsDel", "rsIns",
                         next(v.id for v in variants if v.id.startswith("chrB:1201"))}
    assert all(len(r) == len(x) == 200 for r, x in zip(windows.ref, windows.alt, strict=True))
    for name in ("rsBreak", "rsNear", "rsSoft"):
        v, ref, alt = kept[name]
        start = v.pos - 1
        assert ref == a[start - 100:start + 100] and ref[100] == v.ref
        assert alt == ref[:100] + v.alt + ref[101:]
    assert OCT4 in kept["rsBreak"][1] and OCT4 not in kept["rsBreak"][2]
    _, ref, alt = kept["rsDel"]  # REF 3 bases, ALT the first: two bases deleted
    assert ref == a[200:400] and alt == a[200:301] + a[303:402]
    _, ref, alt = kept["rsIns"]
    assert ref == a[300:500] and alt == a[300:401] + "GGG" + a[401:497]
    problems = {p["id"]: p for p in windows.problems}
    assert set(problems) == {"rsWrong", "rsUnknown", "rsEdge"}
    wrong = problems["rsWrong"]
    assert wrong["reason"] == (f"reference mismatch: VCF says {other(a[500])}, genome has "
                               f"{a[500]} at chrA:501")
    assert wrong["source"] == "variants.vcf:7"
    assert problems["rsUnknown"]["reason"].startswith("unknown chromosome 'chrZ' (genome has chrA")
    assert "runs past the chromosome's ends (length 2000)" in problems["rsEdge"]["reason"]
    with pytest.raises(DataError, match="genome FASTA not found"):
        variant_windows(variants, path.with_name("nope.fa"))


def test_score_variants_finds_the_motif_breaking_snv(vcf, genome):
    windows = variant_windows(read_variants(vcf)[0], genome[0])
    model = motif_model(OCT4, OCT4_RC)
    model.train()
    rows = {r["id"]: r for r in score_variants(model, windows, encode_fn=to_one_hot)}
    assert model.training and model[0].training
    broken, near, far = rows["rsBreak"], rows["rsNear"], rows["rsDel"]
    assert broken["p_ref"] == pytest.approx(sigmoid(2), abs=1e-5)
    assert broken["p_alt"] == pytest.approx(sigmoid(-2), abs=1e-5)
    assert broken["delta"] == pytest.approx(sigmoid(-2) - sigmoid(2), abs=1e-5)
    assert broken["log_odds_ratio"] == pytest.approx(-4.0, abs=1e-4)
    assert near["p_ref"] == pytest.approx(sigmoid(2), abs=1e-5) and abs(near["delta"]) < 1e-6
    assert far["p_ref"] == pytest.approx(sigmoid(-2), abs=1e-5) and abs(far["delta"]) < 1e-6
    assert set(broken) == {"id", "chrom", "pos", "ref", "alt", "p_ref", "p_alt", "delta",
                           "log_odds_ratio", "source"}
    # Tiny batches give the same numbers as one big batch.
    small = {r["id"]: r for r in score_variants(model, windows, encode_fn=to_one_hot,
                                                batch_size=3)}
    assert small["rsBreak"] == broken


def test_strand_average_and_multiclass_probabilities(vcf, genome):
    windows = variant_windows(read_variants(vcf)[0], genome[0])
    forward_only = motif_model(OCT4)  # blind to the octamer on the minus strand

    def near(model: nn.Module, **kwargs) -> dict:
        rows = score_variants(model, windows, encode_fn=to_one_hot, **kwargs)
        return next(r for r in rows if r["id"] == "rsNear")

    assert near(forward_only, strand_average=False)["p_ref"] == pytest.approx(sigmoid(2))
    # The reverse complement has ATTTGCAT, which this model misses: mean of 0.88 and 0.12.
    assert near(forward_only)["p_ref"] == pytest.approx(0.5)
    two_class = motif_model(OCT4, OCT4_RC, outputs=2)
    with torch.no_grad():
        two_class[-1].weight.copy_(torch.tensor([[4.0], [-4.0]]))
        two_class[-1].bias.copy_(torch.tensor([-2.0, 2.0]))  # logits (2, -2) with a motif
    assert near(two_class)["p_ref"] == pytest.approx(sigmoid(4))
    assert near(two_class, target=1)["p_ref"] == pytest.approx(sigmoid(-4))
    with pytest.raises(BiomxError, match="cannot score target 2"):
        near(two_class, target=2)


def test_write_variant_scores_lists_every_allele(vcf, genome, tmp_path):
    variants, skipped = read_variants(vcf)
    windows = variant_windows(variants, genome[0])
    rows = score_variants(motif_model(OCT4, OCT4_RC), windows, encode_fn=to_one_hot)
    out = tmp_path / "out" / "scores.csv"
    write_variant_scores(rows, skipped + windows.problems, out)
    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(variants) + len(skipped) == 12
    assert list(table[0]) == ["id", "chrom", "pos", "ref", "alt", "p_ref", "p_alt", "delta",
                              "log_odds_ratio", "source", "problem"]
    by_id = {r["id"]: r for r in table}
    assert float(by_id["rsBreak"]["log_odds_ratio"]) == pytest.approx(-4.0, abs=1e-4)
    assert by_id["rsBreak"]["problem"] == "" and by_id["rsBreak"]["pos"] == str(MOTIF_AT + 4)
    assert by_id["rsWrong"]["p_ref"] == "" and by_id["rsWrong"]["problem"].startswith(
        "reference mismatch")
    assert "<DEL>" in by_id["rsSV"]["problem"]
    assert [p.name for p in out.parent.iterdir()] == ["scores.csv"]  # no temporary left


def test_shared_encoder_works_as_encode_fn(vcf, genome):
    """The modality's encoder, as the docs suggest, gives the same scores as the local one."""
    sequence = pytest.importorskip("biomx.modalities.sequence.encoding")
    windows = variant_windows(read_variants(vcf)[0], genome[0])
    model = motif_model(OCT4, OCT4_RC)

    def shared(seqs: list[str]) -> torch.Tensor:
        return sequence.one_hot(sequence.encode(seqs, "dna")[0])

    assert score_variants(model, windows, encode_fn=shared) == score_variants(
        model, windows, encode_fn=to_one_hot)
