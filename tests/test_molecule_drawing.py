"""Bounded report drawing: RDKit's 2D depiction grows faster than the atom count, so the atom
attribution section draws molecules up to `MAX_DRAWN_ATOMS` atoms and counts the others.

Real molecules through the real featuriser and a small untrained GIN from the zoo; the large
one is the human insulin B chain (30 residues, 242 heavy atoms) written residue by residue.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem

from biomx.modalities.molecule.graphs import ATOM_DIM, BOND_DIM, featurize_graphs, graph_batch
from biomx.modalities.molecule.interpret import MAX_DRAWN_ATOMS, molecule_explanations
from biomx.models.registry import build_model
from biomx.tasks.regression import build_regression_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add overhead

# Side chains from the alpha carbon (L-amino acids); glycine and proline are written whole.
_SIDE_CHAINS = {"A": "C", "S": "CO", "T": "[C@@H](C)O", "V": "C(C)C", "L": "CC(C)C", "F": "Cc1ccccc1",
                "Y": "Cc1ccc(O)cc1", "H": "Cc1c[nH]cn1", "K": "CCCCN", "R": "CCCNC(=N)N",
                "E": "CCC(=O)O", "N": "CC(N)=O", "Q": "CCC(N)=O", "C": "CS"}  # fmt: skip
INSULIN_B = "FVNQHLCGSHLVEALYLVCGERGFFYTPKT"
SMALL = ["CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CCO", "c1ccc2ccccc2c1"]  # aspirin, caffeine...


def _residue(code: str) -> str:
    if code == "G":
        return "NCC(=O)"
    if code == "P":
        return "N1CCC[C@H]1C(=O)"
    return f"N[C@@H]({_SIDE_CHAINS[code]})C(=O)"


def _peptide(sequence: str) -> str:
    """A linear peptide's canonical SMILES, N- to C-terminus, free acid."""
    return Chem.MolToSmiles(Chem.MolFromSmiles("".join(map(_residue, sequence)) + "O"))


@pytest.fixture(scope="module")
def gin() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("gin", atom_dim=ATOM_DIM, bond_dim=BOND_DIM, out_dim=1, hidden=16, layers=2,
                       ffn_hidden=16).eval()  # fmt: skip


def _section(model: torch.nn.Module, smiles: list[str]) -> dict:
    batch = graph_batch(featurize_graphs(smiles), range(len(smiles)))
    with torch.no_grad():
        preds = model(batch)[:, 0].double().numpy()
    targets = preds + np.linspace(-1.0, 1.0, len(smiles))  # every molecule labelled, errors differ
    return molecule_explanations(model, smiles, batch, preds, targets, build_regression_task(["y"]),
                                 n=len(smiles), steps=4)  # fmt: skip


def test_the_insulin_b_chain_is_scored_but_not_drawn(gin):
    insulin = _peptide(INSULIN_B)
    atoms = Chem.MolFromSmiles(insulin).GetNumAtoms()
    assert atoms == 242 > MAX_DRAWN_ATOMS
    smiles = [*SMALL, insulin]
    section = _section(gin, smiles)
    assert len(section["json"]) == len(smiles)  # all five explained...
    assert len(section["json"][insulin]["atom_scores"]) == atoms
    assert len(section["figures"]) == len(SMALL)  # ...the four small ones drawn
    assert all(f.startswith(b"\x89PNG") for f in section["figures"])
    assert (f" 1 of the 5 molecules have more than {MAX_DRAWN_ATOMS} atoms and are not drawn (drawing time "
            "grows faster than the atom count); their atom scores are in the JSON.") in section["text"]


def test_a_peptide_at_the_bound_is_drawn_and_nothing_is_said(gin):
    peptide = _peptide("GAVLFKST")  # 62 heavy atoms
    assert Chem.MolFromSmiles(peptide).GetNumAtoms() <= MAX_DRAWN_ATOMS
    section = _section(gin, [SMALL[0], peptide])
    assert len(section["figures"]) == 2 and "not drawn" not in section["text"]


def test_only_large_molecules_give_a_section_without_figures(gin):
    long_chain = _peptide(INSULIN_B[:25])
    section = _section(gin, [long_chain])
    assert section["figures"] == [] and list(section["json"]) == [long_chain]
    assert " 1 of the 1 molecules have more than" in section["text"]
