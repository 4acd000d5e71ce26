"""Explanations you can check (docs/trust.md, `biomx.explain.sanity`): the similarity measures on hand
examples, the model-randomisation test (Adebayo et al. 2018) flagging explanations that do not depend
on the weights, two attribution methods per modality, and the check on tiny trained runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from biomx.cli import main
from biomx.explain.sanity import (
    FLAG_SPEARMAN,
    check_explanations,
    randomised_copy,
    rank_similarity,
    ssim,
    top_overlap,
)
from biomx.modalities.tabular.starter_data import export_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _blob(size: int = 28) -> np.ndarray:
    """A smooth 2D map: one bump off centre."""
    yy, xx = np.mgrid[:size, :size]
    return np.exp(-((yy - 9.0) ** 2 + (xx - 17.0) ** 2) / 30.0)


def _input_gradient(model: nn.Module, task, x: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)[torch.arange(len(x)), columns].sum()
        (grad,) = torch.autograd.grad(out, x)
    return grad.reshape(len(x), -1)


def test_identical_maps_are_similar_and_a_permuted_map_is_not() -> None:
    a = _blob()
    assert rank_similarity(a, a) == pytest.approx(1.0)
    assert ssim(a, a) == pytest.approx(1.0)
    assert top_overlap(a, a) == 1.0
    assert rank_similarity(a, -a) == pytest.approx(1.0)  # |attribution|: the sign is not compared
    shuffled = np.random.default_rng(0).permutation(a.ravel()).reshape(a.shape)
    assert abs(rank_similarity(a, shuffled)) < 0.2
    assert ssim(a, shuffled) < 0.3
    assert top_overlap(a, shuffled) < 0.3
    # A monotone transform keeps the ranks (Spearman 1) but not the structure's values (SSIM < 1).
    assert rank_similarity(a, a**3) == pytest.approx(1.0) and ssim(a, a**3) < 1.0
    assert ssim(np.ones(5), np.ones(5)) is None  # 1D: no SSIM


def test_constant_and_zero_maps() -> None:
    assert rank_similarity(np.ones(10), np.full(10, 3.0)) == 1.0  # two constant maps rank alike
    assert rank_similarity(np.ones(10), np.arange(10.0)) == 0.0  # a constant map orders nothing
    # Exact zeros in both (an input at the baseline) are left out: only the other features count.
    a, b = np.array([0, 0, 0, 0, 1.0, 2.0, 3.0]), np.array([0, 0, 0, 0, 3.0, 2.0, 1.0])
    assert rank_similarity(a, b) == pytest.approx(-1.0)


def test_randomised_copy_changes_every_tensor_and_leaves_the_model_and_rng_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(2, 1, 8, 8))
    model.register_parameter("token", nn.Parameter(torch.randn(3)))  # no reset_parameters of its own
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    clone, changed, total = randomised_copy(model)
    assert torch.equal(torch.get_rng_state(), state)
    assert changed == total == len(list(model.parameters()))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(clone.token, model.token)
    again, _, _ = randomised_copy(model)
    assert all(torch.equal(a, b) for a, b in zip(clone.parameters(), again.parameters(), strict=True))


def test_an_explanation_that_ignores_the_weights_is_flagged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, columns = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])

    def constant(model, task, x, columns):  # the same map for every model and input
        return torch.ones(len(x), 8, 8)

    def image_itself(model, task, x, columns):  # an "explanation" that is just the input (an edge map)
        return x[:, 0]

    result = check_explanations({"constant": constant, "input": image_itself, "gradient": _input_gradient},
                                model, None, x, columns)  # fmt: skip
    assert result["randomisation"]["constant"]["flagged"] and result["randomisation"]["input"]["flagged"]
    # The input gradient of a linear model is its weight row: re-initialised, it is another random row.
    gradient = result["randomisation"]["gradient"]
    assert not gradient["flagged"] and abs(gradient["spearman"]["median"]) < FLAG_SPEARMAN / 2
    assert result["flagged"] == ["constant", "input"]
    assert set(result["agreement"]) == {"constant vs input", "constant vs gradient", "input vs gradient"}
    assert result["reinitialised"] == {"changed": 2, "tensors": 2}


def test_a_model_whose_output_ignores_its_weights_is_flagged() -> None:
    class Ignores(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.flatten(1)
            return torch.stack([flat.pow(2).sum(1), flat.sum(1)], dim=1) + 0 * self.linear(flat)

    x = torch.randn(4, 1, 8, 8)
    result = check_explanations({"gradient": _input_gradient, "also": _input_gradient}, Ignores(), None, x,
                                torch.zeros(4, dtype=torch.long))  # fmt: skip
    assert result["randomisation"]["gradient"]["spearman"]["median"] == pytest.approx(1.0)
    assert result["flagged"] == ["gradient", "also"]


def test_a_sequence_model_has_two_methods_that_change_with_the_weights() -> None:
    from biomx.modalities.sequence.attribution import attribution_methods
    from biomx.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("deepsea", in_channels=4, out_dim=2, width=8)
    x = nn.functional.one_hot(torch.randint(0, 4, (3, 100)), 4).permute(0, 2, 1).float()
    cfg = SimpleNamespace(data=SimpleNamespace(sequence=SimpleNamespace(alphabet="dna")))
    methods = attribution_methods(model, None, cfg)
    assert list(methods) == ["integrated gradients", "in-silico mutagenesis"]
    result = check_explanations(methods, model, None, x, torch.tensor([0, 1, 1]))
    assert result["agreement"]["integrated gradients vs in-silico mutagenesis"]["comparable"]
    for found in result["randomisation"].values():
        assert found["comparable"] and found["spearman"]["n"] == 3 and not found["flagged"]
    protein = SimpleNamespace(data=SimpleNamespace(sequence=SimpleNamespace(alphabet="protein")))
    assert attribution_methods(model, None, protein) == {}


def _train(root: Path, name: str, data: str, model: str, explain: int, extra: str = "") -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\ndata: {data}\nmodel: {model}\n{extra}"
        "train: {epochs: 3, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 0, explain: {explain}}}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


def test_an_image_run_checks_grad_cam_and_occlusion_and_reports_them(tmp_path, png_folder) -> None:
    data = f"{{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}"
    run = _train(tmp_path, "img", data, "{name: small_cnn, args: {width: 4, depth: 2, norm: group}}", 3)
    found = json.loads((run / "explanation_checks.json").read_text())
    assert found["methods"] == ["Grad-CAM", "occlusion"] and found["samples"] == 3
    assert found["reinitialised"]["changed"] == found["reinitialised"]["tensors"] > 0
    for name in found["methods"]:
        checked = found["randomisation"][name]
        assert checked["spearman"]["n"] == 3 and checked["ssim"]["n"] == 3  # 28 x 28 maps: SSIM too
        assert checked["flagged"] == (checked["spearman"]["median"] > FLAG_SPEARMAN)
    assert "Grad-CAM vs occlusion" in found["agreement"] and found["seconds"] > 0
    html = (run / "report.html").read_text()
    assert "Explanation checks" in html and "trained vs randomised" in html
    quiet = _train(tmp_path, "quiet", data, "{name: small_cnn, args: {width: 4, depth: 2, norm: group}}", 0)
    assert not (quiet / "explanation_checks.json").exists()
    assert "Explanation checks" not in (quiet / "report.html").read_text()


def test_a_tabular_run_compares_integrated_gradients_with_feature_ablation(tmp_path) -> None:
    export_dataset("breast_cancer", tmp_path)
    data = (f"{{modality: tabular, source: csv, path: {tmp_path / 'breast_cancer.csv'}, label_column: diagnosis, "
            "tabular: {id_column: id, baseline: false}, split: {method: stratified, val: 0.15, test: 0.15}}")  # fmt: skip
    run = _train(tmp_path, "tab", data, "{name: tabular_mlp, args: {width: 16, depth: 1}}", 4,
                 "task: {kind: classification, classes: [benign, malignant]}\n")  # fmt: skip
    found = json.loads((run / "explanation_checks.json").read_text())
    assert found["methods"] == ["integrated gradients", "feature ablation"]
    agreement = found["agreement"]["integrated gradients vs feature ablation"]
    assert agreement["spearman"]["n"] == 4 and agreement["spearman"]["median"] > 0.5  # measured: 0.89


def test_a_molecule_graph_run_compares_atom_attributions(tmp_path) -> None:
    from biomx.modalities.molecule.starter_data import export_molecules

    path = export_molecules("freesolv", tmp_path)
    data = (f"{{modality: molecule, source: csv, path: {path}, label_column: expt, molecule: {{id_column: id}}, "
            "split: {method: random, val: 0.1, test: 0.15}}")  # fmt: skip
    run = _train(tmp_path, "mol", data, "{name: dmpnn, args: {hidden: 16, depth: 2}}", 3,
                 "task: {kind: regression}\n")  # fmt: skip
    found = json.loads((run / "explanation_checks.json").read_text())
    assert found["methods"] == ["integrated gradients (atoms)", "atom occlusion"]
    for checked in found["randomisation"].values():
        assert checked["comparable"] and checked["spearman"]["n"] == 3  # one score per atom of each molecule
    assert found["agreement"]["integrated gradients (atoms) vs atom occlusion"]["spearman"]["n"] == 3
