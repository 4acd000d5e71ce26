"""Fingerprint-bit attributions mapped to atoms, for models that read only molecule-level vectors.

Where the answer is known it is checked exactly: radius-0 Morgan bits belong to single atoms
(the three carbons of propane set two bits: the methyls one, the middle carbon another); a
model linear in the bits gets its own weights back as occlusion contributions, and the atom
scores add up to the sum of the bit contributions. End to end, a one-epoch fingerprint MLP
run now has an "Atom attributions" section in its report and explanations.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from torch import nn
from torch_geometric.data import Data

from biomx.cli import main
from biomx.modalities.molecule.bit_attributions import (
    atom_scores_from_bits,
    bit_attributions,
    bit_environments,
    bit_explanations,
    vector_explanations,
)
from biomx.modalities.molecule.featurize import morgan_fingerprints
from biomx.tasks.classification import build_task
from biomx.tasks.regression import build_regression_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add overhead

SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "c1ccc2ccccc2c1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "OCC(O)CO",
          "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CCN(CC)CC", "ClC(Cl)Cl"]  # fmt: skip


class LinearOnFeatures(nn.Module):
    """A linear model reading `batch.features` (the vector-model contract), K outputs."""

    def __init__(self, dim: int, out_dim: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, batch: Data) -> torch.Tensor:
        return self.linear(batch.features)


def test_radius_zero_bits_map_to_single_atoms():
    morgan = {"radius": 0, "size": 2048, "counts": False}
    environments = bit_environments("CCC", morgan)
    assert len(environments) == 2  # a methyl carbon and a methylene carbon
    groups = sorted(sorted(atoms for (atoms,) in envs) for envs in environments.values())
    assert groups == [[0, 2], [1]]  # each environment is one atom; both methyls share one bit
    on = set(np.flatnonzero(morgan_fingerprints(["CCC"], radius=0, size=2048)[0]).tolist())
    assert on == set(environments)  # the same generator as the featuriser

    # Methyl bit scored 1, methylene bit 0: each methyl carbon gets half.
    methyl = next(bit for bit, envs in environments.items() if len(envs) == 2)
    scores = atom_scores_from_bits(3, {bit: float(bit == methyl) for bit in environments}, environments)
    np.testing.assert_allclose(scores, [0.5, 0.0, 0.5])


def test_radius_one_environment_is_the_centre_and_its_neighbours():
    environments = bit_environments("CC(C)O", {"radius": 1, "size": 4096, "counts": False})
    radius_one = {atoms for envs in environments.values() for atoms in envs if len(atoms) > 1}
    assert (1, 0, 2, 3) in {(atoms[0], *sorted(atoms[1:])) for atoms in radius_one}  # the CH around atom 1


@pytest.mark.parametrize("counts", [False, True])
def test_linear_model_gets_its_weights_and_atom_scores_sum_to_them(counts):
    morgan = {"radius": 2, "size": 256, "counts": counts}
    vectors = torch.from_numpy(morgan_fingerprints(SMILES, radius=2, size=256, counts=counts))
    model = LinearOnFeatures(256, out_dim=2)
    weights = model.linear.weight.detach().double().numpy()
    for i, smiles in enumerate(SMILES):
        bit_scores, atoms, output = bit_attributions(model, smiles, vectors[i], morgan, target=1)
        on = np.flatnonzero(vectors[i].numpy())
        assert sorted(bit_scores) == on.tolist()
        expected = weights[1, on] * vectors[i].numpy()[on]  # occluding bit b removes w_b * x_b
        np.testing.assert_allclose([bit_scores[b] for b in on], expected, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(atoms.sum(), sum(bit_scores.values()), rtol=1e-9, atol=1e-9)
        assert output == pytest.approx(float(model(Data(features=vectors[i:i + 1]))[0, 1].detach()), abs=1e-5)


def test_descriptor_columns_are_kept_and_not_occluded():
    morgan = {"radius": 1, "size": 64, "counts": False}
    fp = torch.from_numpy(morgan_fingerprints(SMILES[:3], radius=1, size=64))
    features = torch.cat([fp, torch.ones(3, 5)], dim=1)  # five "descriptor" columns after the bits
    model = LinearOnFeatures(69)
    bit_scores, _, _ = bit_attributions(model, SMILES[0], features[0], morgan)
    assert max(bit_scores) < 64
    preds = np.array([0.1, 0.2, 0.3])
    section = bit_explanations(model, SMILES[:3], features, preds, preds + 0.5,
                               build_regression_task(["y"]), 2, morgan)  # fmt: skip
    assert section["title"] == "Atom attributions" and "Descriptor contributions are not drawn" in section["text"]
    assert len(section["figures"]) == 2 and section["figures"][0][:4] == b"\x89PNG"


def test_binary_section_explains_the_one_logit_and_leaves_the_model_as_it_was():
    morgan = {"radius": 2, "size": 128, "counts": False}
    features = torch.from_numpy(morgan_fingerprints(SMILES, radius=2, size=128))
    model = LinearOnFeatures(128)
    model.train()
    probs = np.array([0.9, 0.2, 0.8, 0.4, 0.7, 0.1, 0.95, 0.3])
    truth = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=np.float64)
    task = build_task("binary", ["inactive", "active"])
    batch = Data(features=features)
    batch.num_molecules = len(SMILES)
    section = vector_explanations(model, SMILES, batch, probs, truth, task, 4, morgan)
    assert model.training  # eval only while explaining
    assert "the logit of active" in section["text"] and "Descriptor" not in section["text"]
    entries = section["json"]
    assert len(entries) == len(section["figures"]) == 4
    for smiles, entry in entries.items():
        assert entry["explained"] == "active"
        assert len(entry["atom_scores"]) == Chem.MolFromSmiles(smiles).GetNumAtoms()
        assert sum(entry["atom_scores"]) == pytest.approx(sum(entry["bit_scores"].values()), abs=1e-4)
    assert vector_explanations(model, SMILES, batch, probs, truth, task, 4, None) is None  # no fingerprint
    assert bit_explanations(model, SMILES, features, probs, truth, task, 0, morgan) is None


def _molecule_csv(path: Path) -> Path:
    more = ["CCCC", "CCCCO", "c1ccccc1O", "c1ccncc1", "CC(=O)N", "CCOC(=O)C", "NCCO", "CC#N", "C1CCCCC1",
            "c1ccc(Cl)cc1", "OC(=O)CC(=O)O", "CCS", "CC(C)(C)O", "c1ccoc1", "C=CC=C", "CCCCCC"]  # fmt: skip
    rows = [f"m{i},{s},{len(s) / 10:.2f}" for i, s in enumerate(SMILES + more)]
    path.write_text("id,smiles,y\n" + "\n".join(rows) + "\n")
    return path


def test_fingerprint_mlp_run_reports_atom_attributions(tmp_path):
    data = _molecule_csv(tmp_path / "mols.csv")
    cfg = tmp_path / "fp.yaml"
    cfg.write_text(
        "name: fp\n"
        f"data: {{modality: molecule, source: csv, path: {data}, label_column: y,"
        " molecule: {id_column: id, features: [morgan], morgan_size: 128, cache: false},"
        " split: {method: random, val: 0.2, test: 0.25}}\n"
        "model: {name: fingerprint_mlp}\n"
        "task: {kind: regression}\n"
        "train: {epochs: 1, batch_size: 8, progress: false}\n"
        "eval: {bootstrap: 0, explain: 3}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: fp, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "fp"
    explanations = json.loads((run / "explanations.json").read_text())
    section = explanations["Atom attributions"]
    assert len(section) == 3
    for entry in section.values():
        assert entry["atom_scores"] and entry["bit_scores"] and entry["explained"] == "y"
        assert max(int(bit) for bit in entry["bit_scores"]) < 128
    report = (run / "report.html").read_text()
    assert "Atom attributions" in report and "Fingerprint occlusion" in report


def test_multiclass_section_occludes_the_predicted_class_logit():
    morgan = {"radius": 1, "size": 128, "counts": False}
    features = torch.from_numpy(morgan_fingerprints(SMILES, radius=1, size=128))
    model = LinearOnFeatures(128, out_dim=3, seed=1)
    with torch.no_grad():
        probs = torch.softmax(model(Data(features=features)), dim=1).numpy()
    truth = np.array([0, 1, 2, 0, 1, 2, 0, 1], dtype=np.float64)
    task = build_task("multiclass", ["a", "b", "c"])
    section = bit_explanations(model, SMILES, features, probs, truth, task, 4, morgan)
    weights = model.linear.weight.detach().double().numpy()
    assert "the predicted class's logit" in section["text"]
    for smiles, entry in section["json"].items():
        row = SMILES.index(smiles)
        column = int(probs[row].argmax())
        assert entry["explained"] == "abc"[column]
        for bit, score in entry["bit_scores"].items():
            assert score == pytest.approx(weights[column, int(bit)], rel=1e-4, abs=1e-5)
