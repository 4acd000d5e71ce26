"""Genomics end to end on real ChIP-seq windows: FASTA -> chromosome split -> CNN -> report,
then predict, in-silico mutagenesis and variant effects from the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from biomx.cli import main
from data_paths import DNA

CHROMS = ("chr1", "chr2", "chr3", "chr4", "chr5")


def _subset(src: Path, dst: Path, per_chrom: int) -> list[tuple[str, str]]:
    """The first `per_chrom` real records of each chromosome in CHROMS."""
    records, header, counts = [], None, dict.fromkeys(CHROMS, 0)
    for line in src.read_text().splitlines():
        if line.startswith(">"):
            header = line[1:].split()[0]
        elif header:
            chrom = header.split(":")[0]
            if chrom in counts and counts[chrom] < per_chrom:
                counts[chrom] += 1
                records.append((header, line.strip()))
            header = None
    dst.write_text("".join(f">{h}\n{s}\n" for h, s in records))
    return records


@pytest.fixture(scope="module")
def fasta_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tf")
    _subset(DNA / "sample.fa", root / "oct4.fa", 70)
    _subset(DNA / "sample2.fa", root / "mafk.fa", 70)
    return root


def _config(tmp_path: Path, fasta_dir: Path, extra: str = "") -> Path:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: tf\n"
        f"data:\n  modality: sequence\n  source: fasta\n  path: {fasta_dir}\n"
        "  sequence: {files: {Oct4: oct4.fa, Mafk: mafk.fa}, rc_augment: true, shift: 3,\n"
        "             known_motifs: {Oct4: ATGCAAAT, Mafk: TGCTGASTCAGCA},\n"
        "             val_chromosomes: [chr4], test_chromosomes: [chr5]}\n"
        "  split: {method: chromosome}\n"
        "model: {name: deepsea, args: {width: 32}}\n"
        "task: {classes: [Mafk, Oct4]}\n"
        "train: {epochs: 4, batch_size: 32, progress: false, monitor: val_auroc, optimizer: {lr: 0.003}}\n"
        f"eval: {{bootstrap: 100, explain: 4}}\noutput: {{dir: {tmp_path / 'runs'}, name: tf, tensorboard: false}}\n"
        + extra
    )
    return cfg


@pytest.mark.slow
def test_fasta_to_report_predict_ism_and_variants(tmp_path, fasta_dir, capsys):
    assert main(["train", str(_config(tmp_path, fasta_dir))]) == 0
    run = tmp_path / "runs" / "tf"
    split = list(csv.DictReader(open(run / "split.csv")))
    test_chroms = {row["id"].split(":")[0] for row in split if row["split"] == "test"}
    assert test_chroms == {"chr5"}  # whole chromosomes held out
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == 140 and metrics["metrics"]["auroc"]["value"] > 0.7  # learnt from 420 windows
    motifs = json.loads((run / "explanations.json").read_text())["Recovered motifs"]
    assert set(motifs) == {"Oct4", "Mafk"} and all(m and "pwm" in m[0] for m in motifs.values())
    report = (run / "report.html").read_text()
    assert "Recovered motifs" in report and "In-silico mutagenesis" in report

    # predict: FASTA in, one row per record, strand-averaged by the run's settings
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(fasta_dir / "oct4.fa"), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 350 and rows[0]["path"].startswith("chr1:")
    assert sum(r["predicted"] == "Oct4" for r in rows) > 175

    # in-silico mutagenesis: one heatmap and one effect table per sequence
    assert main(["ism", str(run), str(fasta_dir / "oct4.fa"), "-o", str(tmp_path / "ism"), "--limit", "2"]) == 0
    tables = sorted((tmp_path / "ism").glob("*.csv"))
    assert len(tables) == 2 and len(sorted((tmp_path / "ism").glob("*.png"))) == 2
    effects = list(csv.DictReader(open(tables[0])))
    assert len(effects) == 200 and all(float(row[row["reference"]]) == 0.0 for row in effects)

    # variant effects against a genome made of the real windows
    genome = tmp_path / "genome.fa"
    records = [line for line in (fasta_dir / "oct4.fa").read_text().splitlines() if not line.startswith(">")]
    contig = "".join(records[:20])
    genome.write_text(">chrT\n" + "\n".join(contig[i : i + 60] for i in range(0, len(contig), 60)) + "\n")
    ref = contig[999]
    alt = "A" if ref != "A" else "C"
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"chrT\t1000\tgood\t{ref}\t{alt}\t.\t.\t.\n"
                   f"chrT\t1500\tbadref\t{'T' if contig[1499] != 'T' else 'G'}\tA\t.\t.\t.\n"
                   "chrZ\t10\tnocontig\tA\tG\t.\t.\t.\n")  # fmt: skip
    scores = tmp_path / "scores.csv"
    assert main(["variants", str(run), str(vcf), "--genome", str(genome), "-o", str(scores)]) == 0
    by_id = {row["id"]: row for row in csv.DictReader(open(scores))}
    assert by_id["good"]["problem"] == "" and -1 <= float(by_id["good"]["delta"]) <= 1
    assert "reference mismatch" in by_id["badref"]["problem"] and by_id["nocontig"]["problem"]


def test_chromosome_split_errors_name_the_key(tmp_path, fasta_dir, capsys):
    cfg = _config(tmp_path, fasta_dir)
    assert main(["train", str(cfg), "--set", "data.sequence.test_chromosomes=[chr99]"]) == 1
    assert "data.sequence.test_chromosomes: ['chr99'] not in the data" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "data.sequence.test_chromosomes=[]"]) == 1
    assert "data: split method 'chromosome' needs sequence.test_chromosomes, e.g. [chr8, chr9]" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "data.sequence.val_chromosomes=[chr5]"]) == 1
    assert "chromosomes ['chr5'] are in both sequence.val_chromosomes and sequence.test_chromosomes" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "data.split.test_chromosomes=[chr5]"]) == 1
    assert "data.split.test_chromosomes: unknown key" in capsys.readouterr().err
    assert main(["train", str(cfg), "--set", "data.source=npz"]) == 1
    assert "source 'npz' does not hold sequence data" in capsys.readouterr().err


def test_invalid_base_names_file_and_record(tmp_path, fasta_dir, capsys):
    bad = tmp_path / "fa"
    bad.mkdir()
    (bad / "mafk.fa").write_text((fasta_dir / "mafk.fa").read_text())
    lines = (fasta_dir / "oct4.fa").read_text().splitlines()
    lines[3] = lines[3][:10] + "Z" + lines[3][11:]
    (bad / "oct4.fa").write_text("\n".join(lines) + "\n")
    assert main(["train", str(_config(tmp_path, bad))]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad / 'oct4.fa'}: line 3: record {lines[2][1:]}: invalid character 'Z' at position 11")


@pytest.mark.slow
def test_protein_peptides_from_modlamp(tmp_path, capsys):
    """Real antimicrobial vs transmembrane peptides (variable length, padded and masked)."""
    assert main(["datasets", "--name", "amp_vs_tm", "--export", str(tmp_path / "amp")]) == 0
    cfg = Path(__file__).resolve().parents[1] / "examples" / "amp_vs_tm.yaml"
    csv_path = tmp_path / "amp" / "amp_vs_tm.csv"
    assert main(["train", str(cfg), "--set", f"data.path={csv_path}", "--set", "train.epochs=12",
                 "--set", f"output.dir={tmp_path / 'runs'}", "--set", "output.name=amp",
                 "--set", "train.progress=false", "--set", "eval.bootstrap=100"]) == 0  # fmt: skip
    run = tmp_path / "runs" / "amp"
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["auroc"]["value"] > 0.85
    peptides = tmp_path / "new.csv"
    peptides.write_text("id,sequence\nmagainin2,GIGKFLHSAKKFGKAFVGEIMNS\nhelix,LLVIVLLAGSYLAVLAVLLV\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(peptides), "-o", str(out)]) == 0
    rows = {row["path"]: row for row in csv.DictReader(open(out))}
    assert rows["magainin2"]["predicted"] == "AMP" and rows["helix"]["predicted"] == "TM"
