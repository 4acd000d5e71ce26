"""Splits that keep related chemistry together, and how far test is from train.

Bemis-Murcko scaffold (`scaffold_split`) and Butina clusters of Morgan Tanimoto similarity
(`cluster_split`); `scaffold_overlap` measures how far each split is from train.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from rdkit import DataStructs
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold

from biomx.errors import ConfigError
from biomx.modalities.molecule.featurize import morgan_fingerprints
from biomx.modalities.molecule.parallel import default_workers
from biomx.modalities.molecule.standardize import mol_from_smiles

BUTINA_MAX = 5000  # above this many molecules, cluster_split uses MiniBatch k-means


def murcko_scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES (ring systems and linkers, no chirality); "" if acyclic."""
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol_from_smiles(smiles), includeChirality=False)


def _sizes(n: int, val: float, test: float) -> tuple[int, int, int]:
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"data.split: val and test must be fractions with val + test < 1 "
                          f"(got {val}, {test})")
    n_val, n_test = int(round(val * n)), int(round(test * n))
    return n - n_val - n_test, n_val, n_test


def _assign_groups(groups: list[list[int]], n: int, val: float, test: float, seed: int,
                   what: str) -> dict[str, np.ndarray]:
    """Chemprop's balanced split of whole groups: groups bigger than half the val or test size
    go first (so they land in train), then the rest in a seeded random order; each group goes
    to train until it is full, then val, then test."""
    n_train, n_val, n_test = _sizes(n, val, test)
    halves = [size / 2 for size in (n_val, n_test) if size]
    is_big = [any(len(g) > half for half in halves) for g in groups]
    big = [g for g, b in zip(groups, is_big, strict=True) if b]
    small = [g for g, b in zip(groups, is_big, strict=True) if not b]
    rng = np.random.default_rng(seed)
    order = [big[i] for i in rng.permutation(len(big))]
    order += [small[i] for i in rng.permutation(len(small))]
    train, val_idx, test_idx = [], [], []
    for group in order:
        if len(train) + len(group) <= n_train:
            train += group
        elif len(val_idx) + len(group) <= n_val:
            val_idx += group
        else:
            test_idx += group
    splits = {"train": train, "val": val_idx, "test": test_idx}
    for name, wanted in (("train", n_train), ("val", n_val), ("test", n_test)):
        if wanted and not splits[name]:
            raise ConfigError(f"data.split: the {what} split left {name!r} empty ({len(groups)} "
                              f"{what}s in {n} molecules); lower val/test or use method: random")
    return {name: np.sort(np.asarray(idx, dtype=np.int64)) for name, idx in splits.items()}


def _groups(labels: Sequence) -> list[list[int]]:
    """Indices grouped by label, groups in order of first appearance (deterministic)."""
    groups: dict = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return list(groups.values())


def scaffold_split(smiles: Sequence[str], val: float, test: float,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Train/val/test with every Bemis-Murcko scaffold in one split only (chemprop's balanced
    scaffold split), so the test set measures generalisation to new chemotypes.

    Returns:
        {"train", "val", "test"}: sorted int64 indices covering every molecule once.
    """
    return _assign_groups(_groups([murcko_scaffold(s) for s in smiles]), len(smiles), val, test,
                          seed, "scaffold")


def _bit_vectors(smiles: Sequence[str], radius: int = 2, size: int = 2048) -> list:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=size)
    return [generator.GetFingerprint(mol_from_smiles(s)) for s in smiles]


def cluster_split(smiles: Sequence[str], val: float, test: float, seed: int = 0,
                  cutoff: float = 0.6) -> dict[str, np.ndarray]:
    """Train/val/test with whole clusters of similar molecules in one split.

    Clusters: Butina on Morgan (radius 2, 2048 bits) Tanimoto distance <= `cutoff`; above
    BUTINA_MAX molecules (the distance matrix grows as N^2), MiniBatch k-means on 64 SVD
    components of the fingerprints, about 20 molecules per cluster.
    """
    n = len(smiles)
    if n > BUTINA_MAX:
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.decomposition import TruncatedSVD

        fps = morgan_fingerprints(smiles, workers=default_workers())
        # k-means in 2048 dimensions with thousands of centres is slow; 64 SVD components
        # keep the coarse neighbourhoods that a split needs.
        reduced = TruncatedSVD(n_components=64, random_state=seed).fit_transform(fps)
        k = max(2, min(n // 20, 2000))
        labels = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1,
                                 batch_size=4096).fit_predict(reduced)  # fmt: skip
        groups = _groups(labels.tolist())
    else:
        from rdkit.ML.Cluster import Butina

        fps = _bit_vectors(smiles)
        distances = []
        for i in range(1, n):
            distances.extend(1.0 - np.asarray(DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i])))
        clusters = Butina.ClusterData(distances, n, cutoff, isDistData=True)
        groups = sorted((sorted(c) for c in clusters), key=lambda g: g[0])
    return _assign_groups(groups, n, val, test, seed, "cluster")


def scaffold_overlap(smiles: Sequence[str], splits: dict[str, np.ndarray],
                     max_queries: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """How close each split's chemistry is to train (a scaffold split should be far).

    Returns:
        {split: {"molecules", "scaffolds", "shared_scaffold_fraction" (molecules whose scaffold
        also occurs in train; acyclic molecules share the "" scaffold), "mean_nn_similarity"
        (mean over molecules of the highest Morgan Tanimoto similarity to any train molecule,
        on at most `max_queries` sampled molecules)}}; the two train-relative values are None
        for train itself.
    """
    scaffolds = [murcko_scaffold(s) for s in smiles]
    train = np.asarray(splits.get("train", []), dtype=np.int64)
    train_scaffolds = {scaffolds[i] for i in train}
    fps = _bit_vectors(smiles)
    train_fps = [fps[i] for i in train]
    rng = np.random.default_rng(seed)
    out = {}
    for name, idx in splits.items():
        idx = np.asarray(idx, dtype=np.int64)
        stats: dict[str, Any] = {
            "molecules": len(idx),
            "scaffolds": len({scaffolds[i] for i in idx}),
            "shared_scaffold_fraction": None,
            "mean_nn_similarity": None,
        }
        if name != "train" and len(idx) and len(train):
            stats["shared_scaffold_fraction"] = round(
                float(np.mean([scaffolds[i] in train_scaffolds for i in idx])), 4)
            if len(idx) > max_queries:
                idx = rng.choice(idx, max_queries, replace=False)
            nearest = [max(DataStructs.BulkTanimotoSimilarity(fps[i], train_fps)) for i in idx]
            stats["mean_nn_similarity"] = round(float(np.mean(nearest)), 4)
        out[name] = stats
    return out
