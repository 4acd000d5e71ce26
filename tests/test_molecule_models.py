"""Molecule models on real molecules (FreeSolv hydration free energies, via datamol).

Batches are built here with a small RDKit featuriser that follows the graph-batch contract
(each bond as two adjacent directed edges), so these tests do not depend on the modality code.
"""

from __future__ import annotations

import datamol as dm
import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from torch_geometric.data import Data

from biomx.engine.trainer import enable_dropout
from biomx.errors import ConfigError
from biomx.models import molecule as models
from biomx.models.registry import build_model, list_models

ELEMENTS = ["C", "N", "O", "F", "P", "S", "Cl", "Br", "I"]
HYBRIDIZATIONS = [Chem.HybridizationType.SP, Chem.HybridizationType.SP2, Chem.HybridizationType.SP3]
BOND_TYPES = [Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC]
FP_SIZE = 64
SMALL = {
    "dmpnn": {"hidden": 16, "ffn_hidden": 16},
    "gin": {"hidden": 16, "layers": 2, "ffn_hidden": 16},
    "attentive_fp": {"hidden": 16, "ffn_hidden": 16},
    "fingerprint_mlp": {"hidden_sizes": [32, 16]},
}
GRAPH_MODELS = ["dmpnn", "gin", "attentive_fp"]
# a ring, branches, a hypervalent S, a halogen, and methane (one atom, no bonds) last
MIXED = ["CN(C)C(=O)c1ccc(cc1)OC", "CS(=O)(=O)Cl", "CC(C)C=C", "c1ccccc1O", "C"]


def _one_hot(value, options) -> list[float]:
    return [float(value == option) for option in options] + [float(value not in options)]


def _atom_features(atom: Chem.Atom) -> list[float]:
    return (
        _one_hot(atom.GetSymbol(), ELEMENTS)
        + _one_hot(atom.GetDegree(), range(6))
        + _one_hot(atom.GetFormalCharge(), (-1, 0, 1))
        + _one_hot(atom.GetTotalNumHs(), range(5))
        + _one_hot(atom.GetHybridization(), HYBRIDIZATIONS)
        + [float(atom.GetIsAromatic()), float(atom.IsInRing())]
    )


def _bond_features(bond: Chem.Bond) -> list[float]:
    return _one_hot(bond.GetBondType(), BOND_TYPES) + [
        float(bond.GetIsConjugated()),
        float(bond.IsInRing()),
    ]


ATOM_DIM = len(_atom_features(Chem.MolFromSmiles("C").GetAtomWithIdx(0)))
BOND_DIM = len(_bond_features(Chem.MolFromSmiles("CC").GetBondWithIdx(0)))
FP = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=FP_SIZE)


def make_batch(mols: list[Chem.Mol], features: bool = False) -> Data:
    """A graph batch as in the contract: bond k -> edges 2k (u->v) and 2k+1 (v->u)."""
    xs, edges, edge_attr, owner = [], [], [], []
    offset = 0
    for i, mol in enumerate(mols):
        xs += [_atom_features(atom) for atom in mol.GetAtoms()]
        for bond in mol.GetBonds():
            u, v = bond.GetBeginAtomIdx() + offset, bond.GetEndAtomIdx() + offset
            edges += [(u, v), (v, u)]
            edge_attr += [_bond_features(bond)] * 2
        owner += [i] * mol.GetNumAtoms()
        offset += mol.GetNumAtoms()
    batch = Data(
        x=torch.tensor(xs, dtype=torch.float32),
        edge_index=torch.tensor(edges, dtype=torch.int64).reshape(-1, 2).T.contiguous(),
        edge_attr=torch.tensor(edge_attr, dtype=torch.float32).reshape(-1, BOND_DIM),
        batch=torch.tensor(owner, dtype=torch.int64),
    )
    if features:
        batch.features = torch.tensor(
            np.array([FP.GetFingerprintAsNumPy(mol) for mol in mols]), dtype=torch.float32
        )
    batch.num_molecules = len(mols)
    return batch


def build(name: str, features: bool = False, out_dim: int = 1, **args) -> torch.nn.Module:
    torch.manual_seed(0)
    feature_dim = FP_SIZE if features or name == "fingerprint_mlp" else 0
    return build_model(name, atom_dim=ATOM_DIM, bond_dim=BOND_DIM, feature_dim=feature_dim,
                       out_dim=out_dim, **{**SMALL[name], **args})  # fmt: skip


@pytest.fixture(scope="module")
def freesolv() -> tuple[list[Chem.Mol], torch.Tensor]:
    """The first 64 FreeSolv molecules and their standardised measured hydration free energy."""
    table = dm.data.freesolv().iloc[:64]
    mols = [Chem.MolFromSmiles(s) for s in table["smiles"]]
    y = torch.tensor(table["expt"].to_numpy(), dtype=torch.float32)
    return mols, ((y - y.mean()) / y.std())[:, None]


@pytest.mark.parametrize("name", [*GRAPH_MODELS, "fingerprint_mlp"])
@pytest.mark.parametrize("features", [False, True])
def test_output_shape_and_finite(name: str, features: bool) -> None:
    mols = [Chem.MolFromSmiles(s) for s in MIXED]
    model = build(name, features=features, out_dim=3).eval()
    out = model(make_batch(mols, features=features or name == "fingerprint_mlp"))
    assert out.shape == (len(MIXED), 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_batch_without_bonds(name: str) -> None:
    """Only one-atom molecules: no edges at all; each molecule still gets its own output."""
    batch = make_batch([Chem.MolFromSmiles(s) for s in ["C", "O", "N"]])
    assert batch.edge_index.shape == (2, 0)
    out = build(name).eval()(batch)
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    assert len(set(out[:, 0].tolist())) == 3  # different atoms, different outputs


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_features_are_used(name: str) -> None:
    batch = make_batch([Chem.MolFromSmiles(s) for s in MIXED], features=True)
    model = build(name, features=True).eval()
    before = model(batch)
    batch.features = 1 - batch.features
    assert not torch.allclose(before, model(batch))


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_atom_order_does_not_matter(name: str) -> None:
    """The same molecules with atoms renumbered at random give the same outputs."""
    rng = np.random.default_rng(0)
    mols = [Chem.MolFromSmiles(s) for s in MIXED]
    shuffled = [Chem.RenumberAtoms(m, rng.permutation(m.GetNumAtoms()).tolist()) for m in mols]
    model = build(name, features=True).eval()
    expected = model(make_batch(mols, features=True))
    got = model(make_batch(shuffled, features=True))
    assert make_batch(shuffled).x.tolist() != make_batch(mols).x.tolist()  # really reordered
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _reference_dmpnn(model: models.DMPNN, mols: list[Chem.Mol]) -> torch.Tensor:
    """D-MPNN written out with loops over RDKit atoms and bonds (no edge indexing at all)."""
    outputs = []
    for mol in mols:
        x = torch.tensor([_atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32)
        bond_of = {}
        for bond in mol.GetBonds():
            u, v = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            bond_of[(u, v)] = bond_of[(v, u)] = torch.tensor(_bond_features(bond))
        neighbours = {a.GetIdx(): [n.GetIdx() for n in a.GetNeighbors()] for a in mol.GetAtoms()}
        h0 = {(u, v): torch.relu(model.W_i(torch.cat([x[u], e]))) for (u, v), e in bond_of.items()}
        h = dict(h0)
        for _ in range(model.depth - 1):
            new = {}
            for u, v in h:
                message = torch.zeros(model.W_h.in_features)
                for k in neighbours[u]:
                    if k != v:  # every bond into u except the one coming back from v
                        message = message + h[(k, u)]
                new[(u, v)] = torch.relu(h0[(u, v)] + model.W_h(message))
            h = new
        atoms = []
        for v in range(mol.GetNumAtoms()):
            incoming = torch.zeros(model.W_h.in_features)
            for k in neighbours[v]:
                incoming = incoming + h[(k, v)]
            atoms.append(torch.relu(model.W_o(torch.cat([x[v], incoming]))))
        outputs.append(model.head(torch.stack(atoms).mean(0)))
    return torch.stack(outputs)


def test_dmpnn_matches_reference_with_loops() -> None:
    mols = [Chem.MolFromSmiles(s) for s in ["c1ccccc1O", "CC(=O)NC", "C", "CS(=O)(=O)Cl"]]
    model = build("dmpnn", depth=4, bias=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(make_batch(mols)), _reference_dmpnn(model, mols))


def test_dmpnn_needs_paired_edges() -> None:
    batch = make_batch([Chem.MolFromSmiles("CCO")])
    batch.edge_index, batch.edge_attr = batch.edge_index[:, :3], batch.edge_attr[:3]
    with pytest.raises(ValueError, match="two adjacent directed edges"):
        build("dmpnn")(batch)


@pytest.mark.parametrize("name", ["dmpnn", "gin"])
def test_training_reduces_loss(name: str, freesolv) -> None:
    mols, y = freesolv
    batch = make_batch(mols)
    model = build(name, hidden=32, ffn_hidden=32).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(batch), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("name", [*GRAPH_MODELS, "fingerprint_mlp"])
def test_dropout_is_sampled(name: str) -> None:
    """Train mode and MC dropout (eval + dropout layers only) give different passes; eval does not."""
    batch = make_batch([Chem.MolFromSmiles(s) for s in MIXED], features=True)
    model = build(name, features=True, dropout=0.3)
    torch.manual_seed(1)
    assert not torch.allclose(model.train()(batch), model(batch))
    model.eval()
    assert torch.equal(model(batch), model(batch))
    assert enable_dropout(model) > 0
    assert not torch.allclose(model(batch), model(batch))


def test_no_dropout_layers_at_zero() -> None:
    """dmpnn defaults to dropout 0 (chemprop): no layer for MC dropout to sample."""
    assert enable_dropout(build("dmpnn").eval()) == 0


def test_forward_with_atom_features() -> None:
    batch = make_batch([Chem.MolFromSmiles(s) for s in MIXED])
    model = build("dmpnn").eval()
    x = batch.x.clone().requires_grad_(True)
    out = models.forward_with_atom_features(model, batch, x)
    torch.testing.assert_close(out, model(batch))
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert batch.x is not x  # the caller's batch is unchanged
    changed = models.forward_with_atom_features(model, batch, torch.zeros_like(batch.x))
    assert not torch.allclose(changed, out)


def test_registry_builds_and_lists() -> None:
    rows = {row["name"]: row for row in list_models()}
    assert {rows[n]["modalities"] for n in [*GRAPH_MODELS, "fingerprint_mlp"]} == {("molecule",)}
    assert {rows[n]["tasks"] for n in [*GRAPH_MODELS, "fingerprint_mlp"]} == {("classification", "regression")}
    assert rows["dmpnn"]["parameters"] > 300_000  # chemprop's default size, about 355k
    with pytest.raises(ConfigError, match="atom_dim"):
        build_model("gin", feature_dim=0)
    with pytest.raises(ConfigError, match="feature_dim"):
        build_model("fingerprint_mlp", atom_dim=ATOM_DIM, bond_dim=BOND_DIM)
    with pytest.raises(ConfigError, match="aggregation"):
        build_model("dmpnn", atom_dim=ATOM_DIM, bond_dim=BOND_DIM, aggregation="max")
