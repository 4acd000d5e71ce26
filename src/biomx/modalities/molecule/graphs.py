"""Molecular graphs: ONE set of concatenated arrays for all molecules, and batches cut from it.

`featurize_graphs` gives `MolGraphs`: chemprop-like atom and bond one-hots, each bond stored
as two directed edges 2k (u->v) and 2k+1 (v->u), so the reverse of edge e is e ^ 1 in any
batch. `graph_batch` cuts a batch out of the concatenated arrays with index arithmetic (no
per-molecule Python objects) into one `torch_geometric.data.Data`.

Atom features (ATOM_DIM = 59), in this order: element one-hot (ELEMENTS + other), total degree
0-5 + other, formal charge -2..2 + other, chiral tag (none, CW, CCW, other), total H count 0-4
+ other, hybridisation (S, SP, SP2, SP3, SP3D, SP3D2, other), aromatic, mass / 100.
Bond features (BOND_DIM = 14): type (single, double, triple, aromatic, other), conjugated,
in ring, stereo (none, any, Z, E, cis, trans, other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from torch_geometric.data import Data

from biomx.modalities.molecule.parallel import map_chunks
from biomx.modalities.molecule.standardize import mol_from_smiles

ELEMENTS = [1, 3, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 19, 20, 25, 26, 27, 29, 30, 33, 34,
            35, 50, 53]  # H Li B C N O F Na Mg Al Si P S Cl K Ca Mn Fe Co Cu Zn As Se Br Sn I
_HYBRIDS = ["S", "SP", "SP2", "SP3", "SP3D", "SP3D2"]
_BOND_TYPES = ["SINGLE", "DOUBLE", "TRIPLE", "AROMATIC"]
_STEREOS = ["STEREONONE", "STEREOANY", "STEREOZ", "STEREOE", "STEREOCIS", "STEREOTRANS"]


def _lookup(size: int, values: list[int], other: int) -> np.ndarray:
    """A table raw value -> one-hot column; anything not listed -> `other`."""
    table = np.full(size, other, dtype=np.int64)
    table[values] = np.arange(len(values))
    return table


_ELEMENT_COL = _lookup(256, ELEMENTS, len(ELEMENTS))
_HYBRID_COL = _lookup(64, [int(Chem.HybridizationType.names[h]) for h in _HYBRIDS], len(_HYBRIDS))
_BOND_COL = _lookup(64, [int(Chem.BondType.names[b]) for b in _BOND_TYPES], len(_BOND_TYPES))
_STEREO_COL = _lookup(64, [int(Chem.BondStereo.names[s]) for s in _STEREOS], len(_STEREOS))

# (name, width) of each atom one-hot block, then the two scalar columns.
_ATOM_BLOCKS = [("element", len(ELEMENTS) + 1), ("degree", 7), ("charge", 6), ("chirality", 4),
                ("hydrogens", 6), ("hybridisation", len(_HYBRIDS) + 1)]
ATOM_DIM = sum(width for _, width in _ATOM_BLOCKS) + 2  # + aromatic, mass / 100
BOND_DIM = (len(_BOND_TYPES) + 1) + 2 + (len(_STEREOS) + 1)  # type, conjugated, in ring, stereo


@dataclass
class MolGraphs:
    """All molecules' graphs as concatenated arrays (see the module docstring)."""

    atom_features: np.ndarray  # (total_atoms, ATOM_DIM) float32
    bond_features: np.ndarray  # (total_edges, BOND_DIM) float32; each bond twice
    edge_index: np.ndarray  # (2, total_edges) int64, local atom indices per molecule
    atom_ptr: np.ndarray  # (N+1,) int64
    edge_ptr: np.ndarray  # (N+1,) int64

    def __len__(self) -> int:
        return len(self.atom_ptr) - 1


def _graph_chunk(smiles: list[str]) -> dict[str, np.ndarray]:
    """Raw per-atom / per-bond integers of a chunk (one RDKit pass, then numpy)."""
    atoms, masses, bonds, n_atoms, n_bonds = [], [], [], [], []
    for s in smiles:
        mol = mol_from_smiles(s)
        n_atoms.append(mol.GetNumAtoms())
        n_bonds.append(mol.GetNumBonds())
        for a in mol.GetAtoms():
            atoms.append((a.GetAtomicNum(), a.GetTotalDegree(), a.GetFormalCharge(),
                          int(a.GetChiralTag()), a.GetTotalNumHs(), int(a.GetHybridization()),
                          a.GetIsAromatic()))
            masses.append(a.GetMass())
        for b in mol.GetBonds():
            bonds.append((b.GetBeginAtomIdx(), b.GetEndAtomIdx(), int(b.GetBondType()),
                          b.GetIsConjugated(), b.IsInRing(), int(b.GetStereo())))
    return {"atoms": np.array(atoms, dtype=np.int64).reshape(-1, 7),
            "masses": np.array(masses, dtype=np.float32),
            "bonds": np.array(bonds, dtype=np.int64).reshape(-1, 6),
            "n_atoms": np.array(n_atoms, dtype=np.int64),
            "n_bonds": np.array(n_bonds, dtype=np.int64)}


def _one_hot(columns: list[np.ndarray], widths: list[int], n: int, extra: int) -> np.ndarray:
    """(n, sum(widths) + extra): a 1 in each block's column; the `extra` columns are zero."""
    out = np.zeros((n, sum(widths) + extra), dtype=np.float32)
    rows, offset = np.arange(n), 0
    for col, width in zip(columns, widths, strict=True):
        out[rows, offset + col] = 1.0
        offset += width
    return out


def _ptr(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def featurize_graphs(smiles: Sequence[str], workers: int = 1) -> MolGraphs:
    """Molecular graphs of (standardised) SMILES as concatenated arrays (`MolGraphs`).

    A molecule without bonds (a single atom, e.g. methane) has atoms and zero edges.

    Raises:
        ValueError: a SMILES RDKit cannot parse (standardize first).
    """
    parts = map_chunks(_graph_chunk, smiles, workers)
    atoms = np.concatenate([p["atoms"] for p in parts])
    bonds = np.concatenate([p["bonds"] for p in parts])
    n_atoms = np.concatenate([p["n_atoms"] for p in parts])
    n_bonds = np.concatenate([p["n_bonds"] for p in parts])

    element, degree, charge, chiral, hydrogens, hybrid, aromatic = atoms.T
    columns = [_ELEMENT_COL[np.clip(element, 0, 255)], np.where(degree <= 5, degree, 6),
               np.where(np.abs(charge) <= 2, charge + 2, 5), np.minimum(chiral, 3),
               np.where(hydrogens <= 4, hydrogens, 5), _HYBRID_COL[np.clip(hybrid, 0, 63)]]
    x = _one_hot(columns, [w for _, w in _ATOM_BLOCKS], len(atoms), extra=2)
    x[:, -2] = aromatic
    x[:, -1] = np.concatenate([p["masses"] for p in parts]) / 100.0

    begin, end, kind, conjugated, ring, stereo = bonds.T
    b = np.zeros((len(bonds), BOND_DIM), dtype=np.float32)
    rows, n_types = np.arange(len(bonds)), len(_BOND_TYPES) + 1
    b[rows, _BOND_COL[np.clip(kind, 0, 63)]] = 1.0
    b[:, n_types] = conjugated
    b[:, n_types + 1] = ring
    b[rows, n_types + 2 + _STEREO_COL[np.clip(stereo, 0, 63)]] = 1.0
    # Each bond twice, u->v then v->u, so the reverse of edge e is e ^ 1.
    edge_index = np.stack([np.stack([begin, end], axis=1).reshape(-1),
                           np.stack([end, begin], axis=1).reshape(-1)]).astype(np.int64)
    return MolGraphs(atom_features=x, bond_features=np.repeat(b, 2, axis=0), edge_index=edge_index,
                     atom_ptr=_ptr(n_atoms), edge_ptr=_ptr(2 * n_bonds))


def graphs_from_arrays(arrays: dict[str, np.ndarray]) -> MolGraphs:
    """The `MolGraphs` inside `featurize`'s output."""
    return MolGraphs(**{name: arrays[name] for name in MolGraphs.__dataclass_fields__})


def _gather(ptr: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of molecules `idx` in concatenated arrays: (row index, counts, batch ptr)."""
    start = ptr[idx]
    counts = ptr[idx + 1] - start
    batch_ptr = _ptr(counts)
    rows = np.arange(batch_ptr[-1], dtype=np.int64) + np.repeat(start - batch_ptr[:-1], counts)
    return rows, counts, batch_ptr


def graph_batch(graphs: MolGraphs | None, indices: np.ndarray | Sequence[int],
                vectors: np.ndarray | None = None) -> Data:
    """Molecules `indices` as one PyG batch (x, edge_index with global atom indices, edge_attr,
    batch, features, num_molecules); with graphs=None only features and num_molecules."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    data = Data()
    if graphs is not None:
        atoms, atom_counts, atom_ptr = _gather(graphs.atom_ptr, idx)
        edges, edge_counts, _ = _gather(graphs.edge_ptr, idx)
        edge_index = graphs.edge_index[:, edges] + np.repeat(atom_ptr[:-1], edge_counts)
        data.x = torch.from_numpy(np.asarray(graphs.atom_features[atoms], dtype=np.float32))
        data.edge_index = torch.from_numpy(edge_index)
        data.edge_attr = torch.from_numpy(np.asarray(graphs.bond_features[edges], dtype=np.float32))
        data.batch = torch.from_numpy(np.repeat(np.arange(len(idx), dtype=np.int64), atom_counts))
    if vectors is not None:
        data.features = torch.from_numpy(np.asarray(vectors[idx], dtype=np.float32))
    data.num_molecules = len(idx)
    return data
