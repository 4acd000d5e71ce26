"""Regression task: loss and scaling, metrics against sklearn/scipy, bootstrap CIs, errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import train_test_split

from biomx.errors import ConfigError, DataError
from biomx.tasks.regression.task import METRICS, RegressionTask, build_regression_task


def _reference(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The five metrics from sklearn and scipy."""
    return {
        "rmse": math.sqrt(mean_squared_error(true, pred)),
        "mae": mean_absolute_error(true, pred),
        "r2": r2_score(true, pred),
        "spearman": spearmanr(true, pred).statistic,
        "pearson": pearsonr(true, pred).statistic,
    }


@pytest.fixture(scope="module")
def diabetes() -> tuple[np.ndarray, np.ndarray]:
    """Held-out (true, predicted) disease progression from a ridge regression (real data)."""
    x, y = load_diabetes(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0)
    model = Ridge(alpha=0.1).fit(x_tr, y_tr)
    return y_te, model.predict(x_te)


def test_metrics_equal_sklearn_and_scipy_on_diabetes(diabetes):
    true, pred = diabetes
    task = build_regression_task(["progression"])
    expected = _reference(true, pred)
    assert 0.2 < expected["r2"] < 0.7  # a real, imperfect model: the metrics are not trivial
    evaluation = task.evaluate(pred, true, n_bootstrap=200, seed=0)
    quick = task.quick_metrics(pred, true)
    stats = evaluation["per_target"]["progression"]
    assert stats["n"] == len(true) == evaluation["n"]
    for name in METRICS:
        assert evaluation["metrics"][name]["value"] == pytest.approx(expected[name], rel=1e-9)
        assert quick[name] == pytest.approx(expected[name], rel=1e-9)
        assert stats[name] == pytest.approx(expected[name], rel=1e-9)


def test_spearman_with_tied_values_equals_scipy(diabetes):
    true, pred = diabetes
    coarse_pred, coarse_true = np.round(pred, -1), np.round(true, -1)  # many ties on both sides
    quick = build_regression_task(["y"]).quick_metrics(coarse_pred, coarse_true)
    assert quick["spearman"] == pytest.approx(spearmanr(coarse_true, coarse_pred).statistic)


def test_multitask_macro_and_missing_labels(diabetes):
    true, pred = diabetes
    rng = np.random.default_rng(1)
    # Two targets in different units; the second misses a third of its labels (Tox21-style).
    targets = np.stack([true, np.log(true)], axis=1)
    preds = np.stack([pred, np.log(np.clip(pred, 1, None)) + rng.normal(0, 0.1, len(pred))], 1)
    missing = rng.random(len(true)) < 0.33
    targets[missing, 1] = np.nan
    task = build_regression_task(["progression", "log_progression"])
    evaluation = task.evaluate(preds, targets, n_bootstrap=100)
    first = _reference(targets[:, 0], preds[:, 0])
    second = _reference(targets[~missing, 1], preds[~missing, 1])
    assert evaluation["per_target"]["log_progression"]["n"] == int((~missing).sum())
    for name in METRICS:
        assert evaluation["per_target"]["progression"][name] == pytest.approx(first[name])
        assert evaluation["per_target"]["log_progression"][name] == pytest.approx(second[name])
        macro = (first[name] + second[name]) / 2
        assert evaluation["metrics"][name]["value"] == pytest.approx(macro)
    # Without missing labels the macro R² is sklearn's uniform average.
    full = task.quick_metrics(preds, np.stack([true, np.log(true)], axis=1))
    assert full["r2"] == pytest.approx(
        r2_score(np.stack([true, np.log(true)], 1), preds, multioutput="uniform_average"))
    assert len(evaluation["scatter"]["log_progression"]["true"]) == int((~missing).sum())


def test_bootstrap_ci_contains_estimate_is_reproducible_and_has_the_right_width(diabetes):
    true, pred = diabetes
    task = build_regression_task(["progression"])
    first = task.evaluate(pred, true, n_bootstrap=1000, seed=3)
    again = task.evaluate(pred, true, n_bootstrap=1000, seed=3)
    other = task.evaluate(pred, true, n_bootstrap=1000, seed=4)
    assert json.dumps(first) == json.dumps(again)
    assert first["metrics"]["rmse"]["ci_low"] != other["metrics"]["rmse"]["ci_low"]
    for name in METRICS:
        m = first["metrics"][name]
        assert m["ci_low"] < m["value"] < m["ci_high"], name
    # MAE is a mean of |error|: its 95% interval is about +-1.96 standard errors.
    abs_err = np.abs(pred - true)
    half_width = 1.96 * abs_err.std() / math.sqrt(len(abs_err))
    mae = first["metrics"]["mae"]
    assert (mae["ci_high"] - mae["ci_low"]) / 2 == pytest.approx(half_width, rel=0.15)
    narrow = task.evaluate(pred, true, n_bootstrap=1000, ci=0.5, seed=3)["metrics"]["mae"]
    assert mae["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < mae["ci_high"]
    none = task.evaluate(pred, true, n_bootstrap=0)["metrics"]["r2"]
    assert math.isnan(none["ci_low"]) and math.isnan(none["ci_high"])
    assert none["value"] == first["metrics"]["r2"]["value"]


def test_evaluate_is_json_serialisable():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(1000, 1))
    pred = true + rng.normal(size=(1000, 1))
    task = build_regression_task(["y"])
    evaluation = task.evaluate(pred, true, n_bootstrap=1000, seed=0)  # its speed: benchmarks/, not here
    assert set(evaluation) == {"kind", "headline", "n", "targets", "ci", "n_bootstrap", "metrics",
                               "per_target", "scatter"}
    assert evaluation["kind"] == "regression" and evaluation["targets"] == ["y"]
    assert json.loads(json.dumps(evaluation))["metrics"]["rmse"] == evaluation["metrics"]["rmse"]


def test_scatter_is_a_capped_seeded_subsample():
    rng = np.random.default_rng(0)
    true = rng.normal(size=5000)
    pred = 2 * true
    task = build_regression_task(["y"])
    scatter = task.evaluate(pred, true, n_bootstrap=0, seed=1)["scatter"]["y"]
    assert len(scatter["true"]) == len(scatter["pred"]) == 2000
    assert np.allclose(np.asarray(scatter["pred"]), 2 * np.asarray(scatter["true"]))  # pairs kept
    assert len(set(scatter["true"])) == 2000  # without replacement
    assert task.evaluate(pred, true, n_bootstrap=0, seed=1)["scatter"]["y"] == scatter
    assert task.evaluate(pred, true, n_bootstrap=0, seed=2)["scatter"]["y"] != scatter


def test_scaling_round_trip_and_loss_minimum():
    rng = np.random.default_rng(0)
    targets = np.stack([rng.normal(250, 40, 64), rng.normal(-3, 0.01, 64)], axis=1)
    targets[::5, 1] = np.nan
    task = build_regression_task(["a", "b"])
    task.fit_scaling(targets)
    assert task.mean == pytest.approx(np.nanmean(targets, axis=0).tolist())
    assert task.std == pytest.approx(np.nanstd(targets, axis=0).tolist())
    y = torch.tensor(targets)
    best = ((y - torch.tensor(task.mean)) / torch.tensor(task.std)).nan_to_num(0.0)
    best.requires_grad_(True)
    loss = task.loss(best, y)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-9)
    assert best.grad.abs().max() < 1e-6  # a minimum (flat), not just a small value
    back = task.predictions(best.detach()).numpy()
    observed = ~np.isnan(targets)
    assert np.allclose(back[observed], targets[observed])
    # One target: (N,) predictions, whether the model gives (N,) or (N, 1).
    single = build_regression_task(["logS"])
    single.fit_scaling(targets[:, 0])
    z = torch.tensor((targets[:, 0] - single.mean[0]) / single.std[0])
    assert single.predictions(z[:, None]).shape == (64,)
    assert torch.allclose(single.predictions(z), torch.tensor(targets[:, 0]))


def test_fit_scaling_clamps_a_constant_target_and_rejects_an_empty_one():
    task = build_regression_task(["a", "b"])
    task.fit_scaling(np.array([[1.0, 2.0], [1.0, 3.0]]))
    assert task.std[0] == 1e-8 and task.std[1] == pytest.approx(0.5)
    with pytest.raises(DataError, match="'b' has no observed value"):
        task.fit_scaling(np.array([[1.0, np.nan], [2.0, np.nan]]))
    with pytest.raises(DataError, match="expected 2"):
        task.fit_scaling(np.zeros(4))


def test_mse_loss_equals_hand_computed_on_scaled_observed_targets():
    task = build_regression_task(["a", "b", "c"], mean=[10.0, 0.0, -5.0], std=[2.0, 1.0, 0.5])
    outputs = torch.tensor([[0.5, 1.0, -0.8], [0.0, 2.0, 0.3], [1.5, -0.5, 0.0]],
                           requires_grad=True)
    targets = torch.tensor([[12.0, float("nan"), -5.5], [9.0, 1.0, float("nan")],
                            [float("nan"), 0.5, -4.0]])
    # Observed entries, scaled: (12-10)/2=1, (-5.5+5)/0.5=-1, (9-10)/2=-0.5, 1, 0.5, (-4+5)/0.5=2
    squared = [(0.5 - 1) ** 2, (-0.8 + 1) ** 2, (0 + 0.5) ** 2, (2 - 1) ** 2, (-0.5 - 0.5) ** 2,
               (0 - 2) ** 2]
    loss = task.loss(outputs, targets)
    assert loss.item() == pytest.approx(sum(squared) / 6)
    loss.backward()
    missing = torch.isnan(targets)
    assert torch.all(outputs.grad[missing] == 0) and torch.all(outputs.grad[~missing] != 0)
    assert torch.isfinite(outputs.grad).all()


def test_huber_and_mae_losses():
    rng = np.random.default_rng(0)
    outputs = torch.tensor(rng.normal(0, 2, (50, 2)))
    targets = torch.tensor(rng.normal(0, 2, (50, 2)))
    targets[::4, 0] = float("nan")
    observed = ~torch.isnan(targets)
    diff = (outputs - targets)[observed].abs()
    huber = build_regression_task(["a", "b"], "huber").loss(outputs, targets)
    # Quadratic within one (scaled) unit, linear beyond it.
    by_hand = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert huber.item() == pytest.approx(by_hand.item())
    assert (diff > 1).any() and (diff < 1).any()  # both branches are exercised
    mae = build_regression_task(["a", "b"], "mae").loss(outputs, targets)
    assert mae.item() == pytest.approx(diff.mean().item())
    mse = build_regression_task(["a", "b"]).loss(outputs, targets)
    assert mse.item() == pytest.approx(F.mse_loss(outputs[observed], targets[observed]).item())


def test_loss_shapes_and_all_missing_batch():
    task = build_regression_task(["y"], mean=[1.0], std=[2.0])
    outputs = torch.tensor([0.0, 1.0, -1.0])
    targets = torch.tensor([1.0, 5.0, 1.0])
    # (N, 1) outputs with (N,) targets must not broadcast to (N, N).
    assert task.loss(outputs[:, None], targets).item() == pytest.approx((0 + 1 + 1) / 3)
    assert task.loss(outputs, targets).item() == pytest.approx((0 + 1 + 1) / 3)
    with pytest.raises(DataError, match="do not fit 1 target"):
        task.loss(torch.zeros(3, 2), targets)
    empty = torch.zeros(3, requires_grad=True)
    loss = task.loss(empty, torch.full((3,), float("nan")))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph: a training step on such a batch does not crash
    assert torch.all(empty.grad == 0)


def test_all_missing_target_and_constants_give_nan_without_warnings():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(40, 2))
    true[:, 1] = np.nan
    pred = rng.normal(size=(40, 2))
    task = build_regression_task(["a", "b"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluation = task.evaluate(pred, true, n_bootstrap=50)
        everything_missing = build_regression_task(["b"]).quick_metrics(pred[:, 1], true[:, 1])
        constant = build_regression_task(["a"]).quick_metrics(np.full(40, 0.1), true[:, 0])
        constant_true = build_regression_task(["a"]).quick_metrics(pred[:, 0], np.full(40, 3.0))
        no_cases = build_regression_task(["a"]).quick_metrics(np.zeros(0), np.zeros(0))
        diverged = build_regression_task(["a"]).quick_metrics(np.full(40, np.nan), true[:, 0])
    stats = evaluation["per_target"]["b"]
    assert stats["n"] == 0 and all(math.isnan(stats[m]) for m in METRICS)
    assert evaluation["scatter"]["b"] == {"true": [], "pred": []}
    # The macro skips the undefined target: it equals target "a" alone.
    assert evaluation["metrics"]["rmse"]["value"] == evaluation["per_target"]["a"]["rmse"]
    assert all(math.isnan(v) for v in everything_missing.values())
    assert all(math.isnan(v) for v in no_cases.values())
    assert all(math.isnan(v) for v in diverged.values())
    assert math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])
    assert constant["rmse"] == pytest.approx(math.sqrt(mean_squared_error(true[:, 0],
                                                                          np.full(40, 0.1))))
    assert math.isnan(constant_true["r2"]) and math.isnan(constant_true["pearson"])


def test_prediction_columns_and_contract_properties():
    task = build_regression_task(["logS", "logP"])
    preds = np.array([[1.0, 2.0], [3.0, 4.0]])
    columns = task.prediction_columns(preds)
    assert list(columns) == ["pred_logS", "pred_logP"]
    assert columns["pred_logP"].tolist() == [2.0, 4.0]
    assert task.classes == ["logS", "logP"] and task.out_dim == 2 and task.kind == "regression"
    assert RegressionTask(["y"]).mean is None


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"targets": ["y"], "loss_name": "l2"}, "task.loss: expected mse, huber or mae"),
        ({"targets": []}, "task.targets"),
        ({"targets": ["y", "y"]}, "task.targets"),
        ({"targets": ["a", "b"], "mean": [0.0], "std": [1.0, 1.0]}, "task.mean"),
        ({"targets": ["y"], "mean": [0.0], "std": [0.0]}, "task.std"),
        ({"targets": ["y"], "mean": [0.0], "std": ["wide"]}, "task.std"),
        ({"targets": ["y"], "mean": [float("nan")], "std": [1.0]}, "task.mean"),
        ({"targets": ["y"], "mean": [0.0]}, "task.mean, task.std"),
    ],
)
def test_build_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        build_regression_task(**kwargs)


def test_evaluate_rejects_bad_inputs():
    task = build_regression_task(["y"])
    with pytest.raises(DataError, match="empty"):
        task.evaluate(np.zeros(0), np.zeros(0))
    with pytest.raises(DataError, match="NaN or inf"):
        task.evaluate(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="do not fit"):
        task.evaluate(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(DataError, match="inf"):
        task.evaluate(np.zeros(2), np.array([1.0, np.inf]))
    with pytest.raises(ConfigError, match="ci"):
        task.evaluate(np.zeros(4), np.arange(4.0), ci=1.5)
