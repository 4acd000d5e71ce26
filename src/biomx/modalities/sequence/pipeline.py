"""The sequence modality in an experiment: DNA/RNA/protein records -> datasets, motifs, predictions.

Sources: FASTA (labels per file, in the header, or from a CSV), a CSV/TSV with a sequence
column, or genomic intervals (BED/CSV) read from an indexed genome FASTA. Sequences become
one (N, L) token tensor; batches are one-hot (B, A, L). The same five functions as every
pipeline: `load`, `build_datasets`, `inference_model`, `explain`, `read_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.config import DataConfig, ExperimentConfig
from biomx.data.samples import Samples, sha256_file
from biomx.data.splits import split_indices
from biomx.errors import ConfigError, DataError
from biomx.modalities.sequence.dataset import SequenceDataset
from biomx.modalities.sequence.encoding import ALPHABETS, decode, encode, one_hot
from biomx.modalities.sequence.interpret import (
    find_motifs,
    in_silico_mutagenesis,
    integrated_gradients,
    ism_heatmap_figure,
    logo_figure,
    match_motif,
)
from biomx.modalities.sequence.readers import (
    SequenceRecords,
    records_from_fasta,
    records_from_intervals,
    records_from_table,
)
from biomx.models.sequence import strand_averaged
from biomx.protocols import Task, TestView

# ---------------------------------------------------------------------------------- loading


@dataclass
class SequenceInputs:
    """Loaded sequences: token ids (N, L), true lengths (N,), and chromosomes where ids are loci."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    chromosomes: np.ndarray | None  # for chromosome hold-out splits


def _records(cfg: DataConfig) -> tuple[SequenceRecords, list[Path]]:
    s, path = cfg.sequence, Path(cfg.path)
    if cfg.source == "fasta":
        if s.label_from == "file":
            if not s.files:
                raise ConfigError("data.sequence.files: label_from 'file' needs {label: FASTA file in data.path}")
            files = {label: path / name for label, name in s.files.items()}
            return records_from_fasta(files, label_from="file"), list(files.values())
        records = records_from_fasta([path], label_from=s.label_from, labels_csv=s.labels_csv,
                                     id_column=s.id_column, label_column=cfg.label_column)  # fmt: skip
        return records, [path]
    if cfg.source == "csv":
        records = records_from_table(path, sequence_column=s.sequence_column, label_column=cfg.label_column,
                                     id_column=s.id_column)  # fmt: skip
        return records, [path]
    records = records_from_intervals(path, s.genome, flank=s.flank, label_column=cfg.label_column)
    return records, [path, Path(s.genome)]


def load(cfg: DataConfig, classes: list[str] | None = None) -> Samples:
    """Read and encode every sequence named by `cfg`.

    Raises:
        DataError: unreadable files, invalid characters (naming record and position).
    """
    records, files = _records(cfg)
    if len(records) == 0:
        raise DataError(f"{cfg.path}: no sequences found")
    tokens, lengths = encode(records.sequences, cfg.sequence.alphabet, length=cfg.sequence.length,
                             ids=records.ids, sources=records.sources)  # fmt: skip
    chromosomes = records.chromosomes
    found = np.array(chromosomes, dtype=object) if any(c is not None for c in chromosomes) else None
    return Samples(
        inputs=SequenceInputs(tokens, lengths, found),
        labels=records.labels,
        ids=records.ids,
        source_sha256=" ".join(sha256_file(f) for f in files if f.is_file()),
        where=dict(enumerate(records.sources)),
    )


def split(cfg: ExperimentConfig, samples: Samples, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """Hold out whole chromosomes, so overlapping windows cannot leak between splits."""
    s, seq, chroms = cfg.data.split, cfg.data.sequence, samples.inputs.chromosomes
    if chroms is None or any(c is None for c in chroms):
        raise ConfigError("data.split.method: 'chromosome' needs every record id to be an interval "
                          "like chr8:100-300 (or an intervals source)")  # fmt: skip
    known = set(chroms.tolist())
    for key in ("val_chromosomes", "test_chromosomes"):
        missing = [c for c in getattr(seq, key) if c not in known]
        if missing:
            raise ConfigError(f"data.sequence.{key}: {missing} not in the data (have {sorted(known)[:30]})")
    test = np.flatnonzero(np.isin(chroms, seq.test_chromosomes))
    if seq.val_chromosomes:
        val = np.flatnonzero(np.isin(chroms, seq.val_chromosomes))
        train = np.flatnonzero(~np.isin(chroms, seq.val_chromosomes + seq.test_chromosomes))
    else:  # a stratified fraction of the remaining chromosomes' samples
        rest = np.flatnonzero(~np.isin(chroms, seq.test_chromosomes))
        part = split_indices(len(rest), method="stratified", val=0.0, test=s.val, seed=s.seed,
                             labels=None if labels is None else labels[rest])  # fmt: skip
        train, val = rest[part["train"]], rest[part["test"]]
    return {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------------------- datasets


def build_datasets(
    samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray], cfg: ExperimentConfig
) -> tuple[dict[str, SequenceDataset], dict[str, Any], dict[str, Any]]:
    """Per-split one-hot datasets (augmenting only train), preprocessing record, model input args."""
    s = cfg.data.sequence
    nucleic = s.alphabet in ("dna", "rna")
    if s.rc_augment and not nucleic:
        raise ConfigError("data.sequence.rc_augment: only DNA and RNA have a reverse complement")
    tokens, lengths = samples.inputs.tokens, samples.inputs.lengths
    datasets = {}
    for name, idx in splits.items():
        index = torch.as_tensor(idx, dtype=torch.long)
        train = name == "train"
        datasets[name] = SequenceDataset(
            tokens[index], targets[index], alphabet=s.alphabet, lengths=lengths[index],
            rc_augment=s.rc_augment and train, shift=s.shift if train else 0, seed=cfg.train.seed,
        )  # fmt: skip
    preprocessing = {
        "modality": "sequence", "alphabet": s.alphabet, "length": int(tokens.shape[1]),
        "strand_average": s.strand_average and nucleic,
    }  # fmt: skip
    return datasets, preprocessing, {"in_channels": len(ALPHABETS[s.alphabet])}


def inference_model(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    """Average both strands at inference for DNA/RNA (as DeepSEA does)."""
    return strand_averaged(model) if preprocessing.get("strand_average") else model


# ---------------------------------------------------------------------------------- explanations


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    """Attribution logos, an in-silico mutagenesis map and recovered motifs for the report."""
    s, test_data, samples = cfg.data.sequence, test.data, test.samples
    views = task.class_views(test.predictions, test.targets)  # none for regression
    if n <= 0 or len(test_data) == 0 or s.alphabet not in ("dna", "rna") or not views:
        return []  # logos, motifs and mutagenesis: nucleotide classifiers only (so far)
    model = model.eval()
    device = next(model.parameters()).device
    logos, motif_rows, figures_motif, ism_figures, summary = [], [], [], [], {}
    for name, logit, sign, p_class, truth in views:
        # The sequences the model is most sure belong to this class, and do.
        ranked = [int(i) for i in np.argsort(-p_class) if truth[i]][:200]
        if not ranked:
            continue
        x, _ = test_data.__getitems__(ranked)
        attributions = sign * integrated_gradients(model, x.to(device), target=logit, steps=32).cpu()
        attributions = attributions.numpy()
        onehot = x.numpy()
        known = s.known_motifs.get(name)
        # Seqlets a little wider than the known motif, so that it can fit whole.
        motifs = find_motifs(attributions, onehot, width=max(16, len(known or "") + 8), top=3)
        class_summary = []
        for motif in motifs:
            match = match_motif(np.asarray(motif["pwm"]), known) if known else None
            motif_rows.append([name, motif["consensus"], motif["support"], known or "-",
                               f"{match['score']:.2f} ({match['strand']})" if match else "-"])  # fmt: skip
            class_summary.append({**motif, "known": known, "match": match})
        if motifs:
            figures_motif.append(logo_figure(np.asarray(motifs[0]["pwm"]), title=f"{name}: top motif (PWM)"))
        summary[name] = class_summary
        for j, i in enumerate(ranked[: max(1, n // 4)]):
            scores = attributions[j]
            centre = int(np.abs(scores).sum(0).argmax())
            start = max(0, min(centre - 25, scores.shape[1] - 50))
            logos.append(logo_figure(scores[:, start : start + 50], start=start,
                                     title=f"{samples.ids[test.index[i]]} ({name}, p={p_class[i]:.2f})"))  # fmt: skip
        top = ranked[0]
        effects = in_silico_mutagenesis(model, x[:1].to(device), target=logit)[0].cpu().numpy() * sign
        sequence = decode(test_data.__getitems__([top])[0].argmax(1).to(torch.uint8), s.alphabet)[0]
        ism_figures.append(ism_heatmap_figure(effects, sequence, title=f"{samples.ids[test.index[top]]}: "
                                              f"effect of each substitution on P({name})"))  # fmt: skip
    extra = [
        {"title": "Recovered motifs", "text": "Seqlets with the highest integrated-gradients attribution "
         "in the test sequences the model is most confident about, clustered into position weight "
         "matrices and compared with the known motif of each class (score = mean probability of the "
         "known consensus at its best offset, on either strand).",
         "table": {"header": ["class", "motif", "support", "known motif", "match"], "rows": motif_rows},
         "figures": figures_motif, "json": summary},
        {"title": "Attributions", "text": "Integrated gradients x input around each sequence's "
         "strongest 50 bp: letters above the line raise the class probability.", "figures": logos},
        {"title": "In-silico mutagenesis", "text": "Predicted change for every single-base substitution.",
         "figures": ism_figures},
    ]  # fmt: skip
    return extra


# ---------------------------------------------------------------------------------- prediction


def read_inputs(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """FASTA or CSV/TSV (column `sequence`) files -> one-hot batch, record ids, skipped records."""
    tokens, ids, failures = read_tokens(preprocessing, inputs, skip_errors)
    return one_hot(tokens, preprocessing["alphabet"]), ids, failures


def read_tokens(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """FASTA or CSV/TSV files -> uint8 tokens (N, L) at the run's length (what `read_inputs`
    one-hot encodes, and an exported graph takes), record ids, skipped records."""
    alphabet, length = preprocessing["alphabet"], preprocessing["length"]
    ids, sequences, sources = [], [], []
    for item in map(Path, inputs):
        if not item.is_file():
            raise DataError(f"{item}: no such file")
        is_table = item.suffix.lower() in (".csv", ".tsv", ".txt")
        if is_table:  # records are named by an "id" column when there is one, else by row
            with open(item, newline="") as f:
                header = f.readline().replace("\t", ",").strip().split(",")
            records = records_from_table(item, label_column=None, id_column="id" if "id" in header else None)
        else:
            records = records_from_fasta([item], label_from=None)
        ids += records.ids
        sequences += records.sequences
        sources += records.sources
    failures: list[tuple[str, str]] = []
    if skip_errors:  # encode one by one to find and drop the invalid records
        keep = []
        for i, seq in enumerate(sequences):
            try:
                encode([seq], alphabet, length=length, ids=[ids[i]], sources=[sources[i]])
                keep.append(i)
            except DataError as err:
                failures.append((ids[i], str(err)))
        ids, sequences, sources = [ids[i] for i in keep], [sequences[i] for i in keep], [sources[i] for i in keep]
    tokens, _ = encode(sequences, alphabet, length=length, ids=ids, sources=sources)
    return tokens, ids, failures
