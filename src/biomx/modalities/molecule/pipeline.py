"""The molecule modality in an experiment: SMILES / SDF -> standardised, featurised, split, explained.

Sources: a CSV/TSV with a SMILES column, or an SDF whose properties hold the targets.
Molecules are standardised with RDKit (largest fragment, neutralised, canonical SMILES);
an invalid one is listed in the run (row and reason) and skipped, never a crash. Features
(graphs for the GNNs; Morgan fingerprints and RDKit descriptors as molecule-level vectors)
are computed once and kept in the on-disk cache. The same five functions as every pipeline,
plus `split` for scaffold and cluster splits.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from biomx.config import DataConfig, ExperimentConfig
from biomx.data.cache import ArrayCache, default_cache_dir
from biomx.data.samples import Samples, sha256_file
from biomx.errors import ConfigError, DataError
from biomx.modalities.molecule.featurize import featurize
from biomx.modalities.molecule.graphs import (
    ATOM_DIM,
    BOND_DIM,
    MolGraphs,
    graph_batch,
    graphs_from_arrays,
)
from biomx.modalities.molecule.readers import MoleculeRecords, read_molecule_table, read_sdf
from biomx.modalities.molecule.splits import cluster_split, scaffold_overlap, scaffold_split
from biomx.modalities.molecule.standardize import standardize
from biomx.models.molecule import VECTOR_MODELS  # models that read only the molecule-level vectors
from biomx.protocols import Task, TestView

DESCRIPTOR_CLIP = 10.0  # standardised descriptors are clipped: a few have extreme tails


# ---------------------------------------------------------------------------------- loading


def _label_columns(cfg: DataConfig) -> list[str]:
    return list(cfg.label_column) if isinstance(cfg.label_column, list) else [cfg.label_column]


def _read(cfg: DataConfig, columns: list[str]) -> MoleculeRecords:
    path, m = Path(cfg.path), cfg.molecule
    if cfg.source == "sdf":
        return read_sdf(path, label_columns=columns, id_property=m.id_column)
    return read_molecule_table(path, smiles_column=m.smiles_column, label_columns=columns,
                                   id_column=m.id_column)  # fmt: skip


@dataclass
class MoleculeInputs:
    """Loaded molecules: standardised canonical SMILES and their features (graph arrays, vectors)."""

    smiles: list[str]
    features: dict[str, np.ndarray]


def feature_settings(m) -> dict[str, Any]:
    """What `molecule.featurize` computes for a `data.molecule` section (also stored in run.json)."""
    morgan = {"radius": m.morgan_radius, "size": m.morgan_size, "counts": m.morgan_counts}
    return {"graph": True, "morgan": morgan if "morgan" in m.features else None,
            "descriptors": "descriptors" in m.features}  # fmt: skip


def load(cfg: DataConfig, classes: list[str] | None = None) -> Samples:
    """Read, standardise and featurise every molecule named by `cfg`.

    Raises:
        DataError: a missing file or column, a file with no valid molecule.
    """
    columns = _label_columns(cfg)
    split_column = cfg.split.column if cfg.split.method == "predefined" else None
    records = _read(cfg, columns + ([split_column] if split_column else []))
    if not records.smiles:
        raise DataError(f"{cfg.path}: no molecules found")
    smiles, kept, invalid = standardize(records.smiles, records.where, standardize=cfg.molecule.standardize,
                                        max_atoms=cfg.molecule.max_atoms)
    if not kept:
        raise DataError(f"{cfg.path}: none of the {len(records.smiles)} molecules is valid "
                        f"(first problem: {invalid[0][0]}: {invalid[0][1]})")  # fmt: skip
    kept = np.asarray(kept, dtype=np.int64)
    rows = [records.labels[i] for i in kept]
    predefined = None
    if split_column:
        names = np.array([row[-1].strip().lower() for row in rows])
        unknown = sorted(set(names) - {"train", "val", "valid", "validation", "test"})
        if unknown:
            raise DataError(f"{cfg.path}: column {split_column!r} has {unknown[0]!r}; expected train, val or test")
        names[np.isin(names, ["valid", "validation"])] = "val"
        predefined = {name: np.flatnonzero(names == name) for name in ("train", "val", "test") if (names == name).any()}
        rows = [row[:-1] for row in rows]
    labels: list = rows if len(columns) > 1 else [row[0] for row in rows]
    digest = sha256_file(cfg.path)
    m = cfg.molecule
    cache = ArrayCache(Path(m.cache_dir) if m.cache_dir else default_cache_dir()) if m.cache else None
    features = featurize(smiles, feature_settings(m), cache=cache, source_digest=digest,
                             workers=m.workers or None)  # fmt: skip
    return Samples(
        inputs=MoleculeInputs(smiles, features),
        labels=labels,
        ids=[records.ids[i] for i in kept],
        predefined=predefined,
        skipped=list(invalid),
        source_sha256=digest,
        where={j: records.where[i] for j, i in enumerate(kept)},
        label_columns=columns if len(columns) > 1 else None,
    )


def split(cfg: ExperimentConfig, samples: Samples, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scaffold (Bemis-Murcko) or cluster (Butina on Morgan Tanimoto) split: related molecules
    stay in one split, so the test set measures generalisation to new chemistry."""
    s, smiles = cfg.data.split, samples.inputs.smiles
    if s.method == "scaffold":
        return scaffold_split(smiles, s.val, s.test, s.seed)
    return cluster_split(smiles, s.val, s.test, s.seed, cutoff=cfg.data.molecule.cluster_cutoff)


# ---------------------------------------------------------------------------------- datasets


class MoleculeDataset(torch.utils.data.Dataset):
    """Molecules as rows of concatenated feature arrays; a batch is one PyG `Data` graph batch."""

    def __init__(self, graphs: MolGraphs | None, vectors: np.ndarray | None, targets: torch.Tensor,
                 index: np.ndarray):  # fmt: skip
        self.graphs, self.vectors, self.targets = graphs, vectors, targets
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, indices: list[int]) -> tuple[Any, torch.Tensor]:
        rows = self.index[np.asarray(indices, dtype=np.int64)]
        return graph_batch(self.graphs, rows, self.vectors), self.targets[rows]

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return self.__getitems__([i])


def _vectors(features: dict[str, np.ndarray], pre: dict[str, Any]) -> np.ndarray | None:
    """Molecule-level features in model order: Morgan bits/counts, then standardised descriptors."""
    parts = []
    if pre["settings"]["morgan"]:
        parts.append(np.asarray(features["morgan"], dtype=np.float32))
    if pre["settings"]["descriptors"]:
        d = np.asarray(features["descriptors"], dtype=np.float64)
        mean, std = np.asarray(pre["descriptor_mean"]), np.asarray(pre["descriptor_std"])
        d = np.where(np.isfinite(d), d, mean)  # impute missing / overflowing values with the train mean
        parts.append(np.clip((d - mean) / std, -DESCRIPTOR_CLIP, DESCRIPTOR_CLIP).astype(np.float32))
    return np.concatenate(parts, axis=1) if parts else None


def _descriptor_scaling(descriptors: np.ndarray, train: np.ndarray) -> tuple[list[float], list[float]]:
    d = np.asarray(descriptors[train], dtype=np.float64)
    d = np.where(np.isfinite(d), d, np.nan)
    mean = np.nan_to_num(np.nanmean(d, axis=0)) if len(d) else np.zeros(d.shape[1])
    std = np.nan_to_num(np.nanstd(d, axis=0))
    std[std < 1e-8] = 1.0  # constant on train: leave unscaled (becomes 0 after centring)
    return mean.tolist(), std.tolist()


def build_datasets(
    samples: Samples, targets: torch.Tensor, splits: dict[str, np.ndarray], cfg: ExperimentConfig
) -> tuple[dict[str, MoleculeDataset], dict[str, Any], dict[str, Any]]:
    """Per-split graph datasets, the preprocessing record (featuriser settings and descriptor
    scaling from the training split) and the model's input sizes."""
    m, features = cfg.data.molecule, samples.inputs.features
    vector_only = cfg.model.name in VECTOR_MODELS
    if vector_only and not m.features:
        raise ConfigError(f"data.molecule.features: {cfg.model.name} reads molecule-level vectors; "
                          "set e.g. features: [morgan] or [morgan, descriptors]")  # fmt: skip
    pre: dict[str, Any] = {"modality": "molecule", "standardize": m.standardize, "graph": not vector_only,
                           "settings": feature_settings(m), "smiles_column": m.smiles_column,
                           "id_column": m.id_column, "max_atoms": m.max_atoms}  # fmt: skip
    if pre["settings"]["descriptors"]:
        pre["descriptor_mean"], pre["descriptor_std"] = _descriptor_scaling(features["descriptors"], splits["train"])
    vectors = _vectors(features, pre)
    graphs = None if vector_only else graphs_from_arrays(features)
    datasets = {name: MoleculeDataset(graphs, vectors, targets, idx) for name, idx in splits.items()}
    feature_dim = 0 if vectors is None else int(vectors.shape[1])
    # How many leading columns are the Morgan fingerprint (a Tanimoto/MinMax kernel reads only
    # those); the experiment passes a model only the inputs its builder takes.
    input_args = {"feature_dim": feature_dim, "fingerprint_dim": m.morgan_size if pre["settings"]["morgan"] else 0}
    if not vector_only:
        input_args.update(atom_dim=ATOM_DIM, bond_dim=BOND_DIM)
    return datasets, pre, input_args


def inference_model(model: nn.Module, preprocessing: dict[str, Any]) -> nn.Module:
    return model


# ---------------------------------------------------------------------------------- explanations


def explain(model: nn.Module, task: Task, test: TestView, n: int, cfg: ExperimentConfig) -> list[dict]:
    """Report sections: the split's chemistry overlap, invalid molecules, activity cliffs (regression)
    and atom attributions (graph models: integrated gradients; vector models with a Morgan
    fingerprint: bit occlusion mapped to atoms)."""
    from biomx.modalities.molecule.bit_attributions import vector_explanations
    from biomx.modalities.molecule.cliffs import cliff_section
    from biomx.modalities.molecule.interpret import molecule_explanations

    extra = []
    samples, test_data, test_index, splits = test.samples, test.data, test.index, test.splits
    smiles = samples.inputs.smiles
    if splits is not None:
        overlap = scaffold_overlap(smiles, splits)
        rows = [[name, *[v for v in stats.values()]] for name, stats in overlap.items() if isinstance(stats, dict)]
        header = ["split", *next(iter(s for s in overlap.values() if isinstance(s, dict))).keys()]
        extra.append({"title": "Splits and chemistry overlap",
                      "text": f"Split method: {cfg.data.split.method}. A scaffold or cluster split keeps "
                      "related molecules together, so test molecules share fewer scaffolds with train.",
                      "table": {"header": header, "rows": rows}, "json": overlap})  # fmt: skip
    if samples.skipped:
        extra.append({"title": "Invalid molecules", "text": f"{len(samples.skipped)} molecules could not be "
                      "read or standardised and were left out (also listed in skipped.csv).",
                      "table": {"header": ["where", "reason"], "rows": [list(s) for s in samples.skipped[:50]]}})  # fmt: skip
    cliffs = cliff_section(task, test, cfg.data.molecule.cliffs)
    if cliffs:
        extra.append(cliffs)
    if n > 0 and len(test_data):
        batch, _ = test_data.__getitems__(list(range(len(test_data))))
        test_smiles = [smiles[i] for i in test_index]
        # Gradients through the atoms need a network that reads the graph; a model with no
        # trainable parameters (solvers, a stack of them) is explained by its fingerprint bits.
        if test_data.graphs is not None and any(p.requires_grad for p in model.parameters()):
            section = molecule_explanations(model.eval(), test_smiles, batch.to(next(model.parameters()).device),
                                            test.predictions, test.targets, task, n)  # fmt: skip
        else:  # a vector model: fingerprint bits mapped to atoms (None without a fingerprint)
            section = vector_explanations(model, test_smiles, batch, test.predictions, test.targets, task, n,
                                          feature_settings(cfg.data.molecule)["morgan"])  # fmt: skip
        if section:
            extra.append(section)
    return extra


# ---------------------------------------------------------------------------------- prediction


def _read_smi(path: Path | None) -> MoleculeRecords:
    """A .smi file (or standard input): SMILES, optionally followed by a name, one per line."""
    try:
        text = sys.stdin.read() if path is None else path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{'standard input' if path is None else path}: {NOT_MOLECULES}") from None
    source = "stdin" if path is None else str(path)
    smiles, ids, where = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#") or parts[0].lower() in ("smiles", "canonical_smiles"):
            continue
        smiles.append(parts[0])
        ids.append(parts[1] if len(parts) > 1 else f"{source}:{number}")
        where.append(f"{source} line {number}")
    return MoleculeRecords(smiles=smiles, ids=ids, labels=[[] for _ in smiles], where=where)


def _id_column(path: Path, preprocessing: dict[str, Any]) -> str | None:
    """The column naming molecules in a prediction table: the run's id column, `id` or `name`."""
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        header = next(csv.reader(f, delimiter="\t" if ".tsv" in path.suffixes else ","), [])
    candidates = [preprocessing.get("id_column"), "id", "name"]
    return next((c for c in candidates if c and c in header), None)


NOT_MOLECULES = "not a CSV/TSV, SDF or .smi file of molecules"


def _check_text(path: Path) -> None:
    """Refuse a file that is not text (an image, a binary blob): one line, not a decode error."""
    import gzip

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                head = f.read(65536)
        else:
            with open(path, "rb") as f:
                head = f.read(65536)
    except (OSError, EOFError):
        raise DataError(f"{path}: {NOT_MOLECULES}") from None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a multi-byte character cut at the end of `head`
            raise DataError(f"{path}: {NOT_MOLECULES}") from None
    if b"\0" in head:
        raise DataError(f"{path}: {NOT_MOLECULES}")


def read_inputs(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[MoleculeDataset, list[str], list[tuple[str, str]]]:
    """CSV/TSV (SMILES column as in training, else `smiles`), SDF, .smi files or "-" (SMILES on
    standard input) -> a dataset of featurised molecules, their names, and skipped molecules."""
    features, names, invalid = read_features(preprocessing, inputs, skip_errors)
    graphs = graphs_from_arrays(features) if preprocessing["graph"] else None
    vectors = _vectors(features, preprocessing)
    n = len(names)
    data = MoleculeDataset(graphs, vectors, torch.zeros(n), np.arange(n))
    return data, names, invalid


def read_features(
    preprocessing: dict[str, Any], inputs: list[str | Path], skip_errors: bool = False
) -> tuple[dict[str, np.ndarray], list[str], list[tuple[str, str]]]:
    """The molecules of `inputs` (as `read_inputs` reads them), standardised and featurised with
    the run's settings: (features, names of the valid molecules, skipped molecules)."""
    smiles, ids, where = [], [], []
    for item in inputs:
        if str(item) == "-":
            records = _read_smi(None)
            if not records.smiles:
                raise DataError("no molecules on standard input")
        else:
            path = Path(item)
            if not path.is_file():
                raise DataError(f"{path}: no such file")
            _check_text(path)
            suffix = path.suffix.lower()
            if suffix in (".sdf", ".sd") or path.name.lower().endswith(".sdf.gz"):
                records = read_sdf(path, label_columns=[])
            elif suffix in (".smi", ".smiles", ".txt"):
                records = _read_smi(path)
            else:
                records = read_molecule_table(path, smiles_column=preprocessing["smiles_column"],
                                                  label_columns=[], id_column=_id_column(path, preprocessing))  # fmt: skip
        if not records.smiles and str(item) != "-":
            raise DataError(f"{item}: no molecules found")
        smiles += records.smiles
        ids += records.ids
        where += records.where
    # Runs written before data.molecule.max_atoms existed get its default.
    canonical, kept, invalid = standardize(smiles, where, standardize=preprocessing["standardize"],
                                           max_atoms=preprocessing.get("max_atoms", 1000))
    if invalid and not skip_errors:
        raise DataError(f"{invalid[0][0]}: {invalid[0][1]} (use --skip-errors to leave invalid molecules out)")
    features = featurize(canonical, preprocessing["settings"], cache=None, source_digest="")
    return features, [ids[i] for i in kept], list(invalid)
