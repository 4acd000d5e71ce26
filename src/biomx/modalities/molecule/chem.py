"""Molecules: from SMILES / SDF files to featurised graphs, fingerprints and splits.

1. Reading: `read_molecule_table` (CSV/TSV with a SMILES column) and `read_sdf` (properties
   as targets) give `MoleculeRecords`; `standardize` keeps the largest fragment, neutralises
   and canonicalises with RDKit, and lists invalid molecules (where, reason) instead of raising.
2. Features, all numpy and computed once per dataset (`featurize`, cached on disk):
   - graphs (`featurize_graphs`): ONE set of concatenated arrays for all molecules
     (`MolGraphs`), chemprop-like atom and bond one-hots, each bond stored as two directed
     edges 2k (u->v) and 2k+1 (v->u), so the reverse of edge e is e ^ 1 in any batch;
   - Morgan fingerprints (bits or counts) and all RDKit 2D descriptors as molecule vectors.
     Descriptors that overflow are NaN here; the pipeline imputes the train mean and
     standardises (`molecule_pipeline`).
   `graph_batch` cuts a batch out of the concatenated arrays with index arithmetic (no
   per-molecule Python objects) into one `torch_geometric.data.Data`.
3. Splits that keep related chemistry together: Bemis-Murcko scaffold (`scaffold_split`) and
   Butina clusters of Morgan Tanimoto similarity (`cluster_split`); `scaffold_overlap`
   measures how far test is from train.

Atom features (ATOM_DIM = 59), in this order: element one-hot (ELEMENTS + other), total degree
0-5 + other, formal charge -2..2 + other, chiral tag (none, CW, CCW, other), total H count 0-4
+ other, hybridisation (S, SP, SP2, SP3, SP3D, SP3D2, other), aromatic, mass / 100.
Bond features (BOND_DIM = 14): type (single, double, triple, aromatic, other), conjugated,
in ring, stereo (none, any, Z, E, cis, trans, other).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rdkit
import torch
from rdkit import Chem, DataStructs
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.Chem.Scaffolds import MurckoScaffold
from rdkit.rdBase import BlockLogs
from torch_geometric.data import Data

from biomx.data.cache import ArrayCache, cache_key
from biomx.engine.logging import console
from biomx.errors import ConfigError, DataError

FEATURE_VERSION = 1  # bump when a featuriser changes: old cache entries become misses
PARALLEL_MIN = 2000  # fewer molecules than this are featurised in-process
HUGE = 1e10  # descriptor values beyond this (e.g. Ipc of large molecules) become NaN
BUTINA_MAX = 5000  # above this many molecules, cluster_split uses MiniBatch k-means

# ------------------------------------------------------------------------------ feature layout

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


@dataclass
class MoleculeRecords:
    """Molecules as read from a file, before standardisation, index-aligned."""

    smiles: list[str]  # as read; for SDF the RDKit SMILES ("" when the block is unreadable)
    ids: list[str]  # id column / property, else "row N" (CSV) or the title / "record N" (SDF)
    labels: list[list[str]]  # one string per label column, "" when missing
    where: list[str]  # "file.csv row 12", "file.sdf record 3": for messages


# ------------------------------------------------------------------------------ reading


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    lower = {n.lower(): n for n in names}
    if name.lower() in lower:
        close = [lower[name.lower()]]
    else:
        close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _missing(path: Path, what: str, plural: str, name: str, found: Sequence[str]) -> DataError:
    listed = ", ".join(found[:30]) + (", ..." if len(found) > 30 else "") or "none"
    hint = _did_you_mean(name, found)
    return DataError(f"{path}: no {what} {name!r} ({plural} found: {listed}){hint}")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _delimiter(path: Path, first_line: str) -> str:
    """Tab for .tsv/.tab, comma for .csv, else sniffed from the header line."""
    suffix = Path(path.name.lower().removesuffix(".gz")).suffix
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(first_line, delimiters=",\t;").delimiter
    except csv.Error:
        return ","


def read_molecule_table(path: str | Path, smiles_column: str = "smiles",
                        label_columns: list[str] | None = None,
                        id_column: str | None = None) -> MoleculeRecords:
    """Read a CSV/TSV (optionally .gz) with one molecule per row.

    Rows are numbered as in a spreadsheet (header = row 1). An empty SMILES cell is kept (and
    reported as invalid by `standardize`), so row numbers stay aligned with the file.

    Raises:
        DataError: a missing or unreadable file, a missing column (with the columns found and
            the closest name).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    first = text.split("\n", 1)[0]
    try:
        reader = csv.reader(io.StringIO(text), delimiter=_delimiter(path, first))
        header = [name.strip() for name in next(reader, [])]
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: cannot read table: {e}") from None
    if not header:
        raise DataError(f"{path}: empty file (expected a header with a {smiles_column!r} column)")
    label_columns = list(label_columns or [])
    for name in [smiles_column, *label_columns, *([id_column] if id_column else [])]:
        if name not in header:
            raise _missing(path, "column", "columns", name, header)
    col = {name: header.index(name) for name in header}  # first occurrence wins

    def cell(row: list[str], name: str) -> str:
        i = col[name]
        return row[i].strip() if i < len(row) else ""

    records = MoleculeRecords([], [], [], [])
    for n, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row):
            continue  # blank line
        records.smiles.append(cell(row, smiles_column))
        records.ids.append((cell(row, id_column) if id_column else "") or f"row {n}")
        records.labels.append([cell(row, name) for name in label_columns])
        records.where.append(f"{path.name} row {n}")
    return records


def read_sdf(path: str | Path, label_columns: list[str] | None = None,
             id_property: str | None = None) -> MoleculeRecords:
    """Read an SDF (optionally .sdf.gz); targets come from the records' properties.

    A molecule block RDKit cannot read is kept as an invalid record ("" SMILES, or SMILES that
    fail sanitisation again in `standardize` with RDKit's message), never a crash.

    Raises:
        DataError: a missing file, a label / id property that no record has.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    label_columns = list(label_columns or [])
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    records, seen = MoleculeRecords([], [], [], []), set()
    try:
        with opener(path, "rb") as f, BlockLogs():
            supplier = Chem.ForwardSDMolSupplier(f, sanitize=False, removeHs=False)
            for n, mol in enumerate(supplier, start=1):
                # Property values as written (GetPropsAsDict would turn "007" into 7).
                props = {k: mol.GetProp(k).strip() for k in mol.GetPropNames()} if mol else {}
                seen.update(props)
                title = mol.GetProp("_Name").strip() if mol and mol.HasProp("_Name") else ""
                pid = props.get(id_property, "") if id_property else ""
                records.smiles.append(_sdf_smiles(mol))
                records.ids.append(pid or title or f"record {n}")
                records.labels.append([props.get(name, "") for name in label_columns])
                records.where.append(f"{path.name} record {n}")
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read SDF: {e}") from None
    if records.smiles:
        for name in [*label_columns, *([id_property] if id_property else [])]:
            if name not in seen:
                raise _missing(path, "property", "properties", name, sorted(seen))
    return records


def _sdf_smiles(mol: Chem.Mol | None) -> str:
    """RDKit SMILES of an SDF molecule (explicit Hs removed); unsanitisable ones unsanitised."""
    if mol is None:
        return ""
    try:
        clean = Chem.Mol(mol)
        Chem.SanitizeMol(clean)
        return Chem.MolToSmiles(Chem.RemoveHs(clean))
    except Exception:  # noqa: BLE001 - RDKit raises several types; standardize reports it
        try:
            return Chem.MolToSmiles(mol, canonical=False)
        except Exception:  # noqa: BLE001
            return ""


# ------------------------------------------------------------------------------ standardising


def _parse_error(smiles: str) -> str:
    """Why RDKit rejects `smiles`: a parse error, or the sanitisation message."""
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return f"cannot parse SMILES {smiles!r}"
    try:
        Chem.SanitizeMol(mol)
    except Exception as e:  # noqa: BLE001 - AtomValenceException, KekulizeException, ...
        return f"invalid molecule {smiles!r}: {' '.join(str(e).split())}"
    return f"cannot read SMILES {smiles!r}"


def standardize(smiles_list: Sequence[str], where: Sequence[str],
                standardize: bool = True) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """Parse, clean and canonicalise molecules; invalid ones are collected, never raised.

    With `standardize`, a salt or solvent is stripped (largest fragment) and charges
    neutralised where a neutral form exists, so "CC(=O)[O-].[Na+]" becomes "CC(=O)O" and the
    same compound measured as different salts is one molecule. Without it, SMILES are only
    canonicalised.

    Returns:
        (canonical SMILES of the valid molecules, their indices in the input,
         [(where, reason)] for the invalid ones)
    """
    chooser, uncharger = rdMolStandardize.LargestFragmentChooser(), rdMolStandardize.Uncharger()
    canonical, kept, invalid = [], [], []
    with BlockLogs():
        for i, smiles in enumerate(smiles_list):
            smiles = (smiles or "").strip()
            if not smiles:
                invalid.append((where[i], "no molecule (empty SMILES, or an SDF block RDKit "
                                          "cannot read)"))
                continue
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                invalid.append((where[i], _parse_error(smiles)))
                continue
            try:
                if standardize:
                    mol = uncharger.uncharge(chooser.choose(mol))
                if mol.GetNumHeavyAtoms() == 0:
                    invalid.append((where[i], f"no heavy atoms in {smiles!r}"))
                    continue
                canonical.append(Chem.MolToSmiles(mol))
            except Exception as e:  # noqa: BLE001 - an RDKit failure on one molecule
                message = " ".join(str(e).split())
                invalid.append((where[i], f"cannot standardise {smiles!r}: {message}"))
                continue
            kept.append(i)
    return canonical, kept, invalid


def _mol(smiles: str) -> Chem.Mol:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError(f"invalid SMILES {smiles!r}: featurise only the output of standardize()")
    return mol


# ------------------------------------------------------------------------------ featurising


def default_workers() -> int:
    """Featurisation processes: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _map_chunks(fn: Callable[[list[str]], Any], smiles: Sequence[str], workers: int) -> list[Any]:
    """fn over chunks of `smiles`, in processes for large inputs; results in input order."""
    smiles = list(smiles)
    if workers <= 1 or len(smiles) < PARALLEL_MIN:
        return [fn(smiles)]
    n_chunks = workers * 4
    bounds = np.linspace(0, len(smiles), n_chunks + 1).astype(int)
    chunks = [smiles[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, chunks))


def _graph_chunk(smiles: list[str]) -> dict[str, np.ndarray]:
    """Raw per-atom / per-bond integers of a chunk (one RDKit pass, then numpy)."""
    atoms, masses, bonds, n_atoms, n_bonds = [], [], [], [], []
    for s in smiles:
        mol = _mol(s)
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
    parts = _map_chunks(_graph_chunk, smiles, workers)
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


def _morgan_chunk(smiles: list[str], radius: int, size: int, counts: bool) -> np.ndarray:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=size)
    out = np.zeros((len(smiles), size), dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = _mol(s)
        if counts:
            out[i] = generator.GetCountFingerprintAsNumPy(mol)
        else:
            out[i] = generator.GetFingerprintAsNumPy(mol)
    return out


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, size: int = 2048,
                        counts: bool = False, workers: int = 1) -> np.ndarray:
    """(N, size) float32 Morgan (ECFP-like) fingerprints: 0/1 bits, or counts per bit."""
    chunk = partial(_morgan_chunk, radius=radius, size=size, counts=counts)
    parts = _map_chunks(chunk, smiles, workers)
    return np.concatenate(parts) if parts else np.zeros((0, size), np.float32)


def descriptor_names() -> list[str]:
    """Names of the columns of `rdkit_descriptors` (all RDKit 2D descriptors, RDKit's order)."""
    return [name for name, _ in Descriptors._descList]


def _descriptor_chunk(smiles: list[str]) -> np.ndarray:
    names = descriptor_names()
    out = np.full((len(smiles), len(names)), np.nan, dtype=np.float64)
    with BlockLogs():
        for i, s in enumerate(smiles):
            values = Descriptors.CalcMolDescriptors(_mol(s), missingVal=np.nan, silent=True)
            out[i] = [values.get(name, np.nan) for name in names]
    out[~np.isfinite(out) | (np.abs(out) > HUGE)] = np.nan
    return out.astype(np.float32)


def rdkit_descriptors(smiles: Sequence[str], workers: int = 1) -> np.ndarray:
    """(N, D) float32 RDKit 2D descriptors (`descriptor_names()`).

    A descriptor RDKit cannot compute, or one that is infinite or beyond HUGE, is NaN: the
    pipeline imputes it with the training split's mean and standardises every column with the
    training split's statistics.
    """
    parts = _map_chunks(_descriptor_chunk, smiles, workers)
    return np.concatenate(parts) if parts else np.zeros((0, len(descriptor_names())), np.float32)


def _check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - {"graph", "morgan", "descriptors"}
    if unknown:
        raise ConfigError(f"molecule features: unknown setting {sorted(unknown)[0]!r} "
                          "(expected graph, morgan, descriptors)")
    morgan = settings.get("morgan")
    if morgan is not None:
        morgan = {"radius": int(morgan.get("radius", 2)), "size": int(morgan.get("size", 2048)),
                  "counts": bool(morgan.get("counts", False))}
    return {"graph": bool(settings.get("graph", True)), "morgan": morgan,
            "descriptors": bool(settings.get("descriptors", False))}


def featurize(smiles: Sequence[str], settings: dict[str, Any], cache: ArrayCache | None = None,
              source_digest: str = "", workers: int | None = None) -> dict[str, np.ndarray]:
    """Every requested feature of `smiles`, computed once and then read from `cache`.

    Args:
        smiles: standardised SMILES (the output of `standardize`).
        settings: {"graph": bool, "morgan": {"radius", "size", "counts"} or None,
            "descriptors": bool}.
        cache: where to keep the arrays (None: always compute). The key covers the source
            file's digest, the SMILES, the settings, FEATURE_VERSION and the RDKit version.
        workers: featurisation processes for large inputs (None: `default_workers()`).

    Returns:
        Arrays by name: atom_features, bond_features, edge_index, atom_ptr, edge_ptr (graph),
        morgan, descriptors. From the cache they are read-only memory maps.
    """
    settings = _check_settings(settings)
    workers = default_workers() if workers is None else workers
    digest = hashlib.sha256("\n".join(smiles).encode()).hexdigest()
    key = cache_key("molecule-features", FEATURE_VERSION, rdkit.__version__, source_digest,
                    digest, settings)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    arrays: dict[str, np.ndarray] = {}
    if settings["graph"]:
        arrays.update(asdict(featurize_graphs(smiles, workers)))
    if settings["morgan"]:
        arrays["morgan"] = morgan_fingerprints(smiles, **settings["morgan"], workers=workers)
    if settings["descriptors"]:
        arrays["descriptors"] = rdkit_descriptors(smiles, workers)
    if cache is not None:
        try:
            cache.put(key, arrays, meta={"molecules": len(smiles), "settings": settings,
                                         "rdkit": rdkit.__version__})  # fmt: skip
        except OSError as e:
            console.print(f"[yellow]warning: cannot write the feature cache {cache.root}: {e}[/]")
    return arrays


def graphs_from_arrays(arrays: dict[str, np.ndarray]) -> MolGraphs:
    """The `MolGraphs` inside `featurize`'s output."""
    return MolGraphs(**{name: arrays[name] for name in MolGraphs.__dataclass_fields__})


# ------------------------------------------------------------------------------ batching


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


# ------------------------------------------------------------------------------ splits


def murcko_scaffold(smiles: str) -> str:
    """Bemis-Murcko scaffold SMILES (ring systems and linkers, no chirality); "" if acyclic."""
    return MurckoScaffold.MurckoScaffoldSmiles(mol=_mol(smiles), includeChirality=False)


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
    return [generator.GetFingerprint(_mol(s)) for s in smiles]


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
