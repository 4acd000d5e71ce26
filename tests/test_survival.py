"""The survival task's pieces against references: the Cox partial likelihood against lifelines
(Efron) and a hand computation (Breslow), the logistic-hazard likelihood by hand, the Breslow
baseline against lifelines' survival curves, and every metric against scikit-survival on real
cohorts (GBSG2, WHAS500, the veterans' lung cancer trial). Bad targets are one line naming the
row and the column."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from biomx.data.samples import Samples
from biomx.errors import ConfigError, DataError
from biomx.tasks import get_task
from biomx.tasks.survival import metrics as m
from biomx.tasks.survival.baseline import breslow, cox_survival
from biomx.tasks.survival.losses import (
    bin_cuts,
    cox_loss,
    discretize,
    logistic_hazard_loss,
    null_hazard_logits,
)
from biomx.tasks.survival.scoring import ibs_grid
from biomx.tasks.survival.targets import encode_survival
from biomx.tasks.survival.task import SurvivalTask, task_from_info

sksurv_metrics = pytest.importorskip("sksurv.metrics")
lifelines = pytest.importorskip("lifelines")


# ------------------------------------------------------------------ losses


def test_cox_loss_breslow_and_efron_by_hand():
    time = torch.tensor([1.0, 1.0, 2.0, 3.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0])
    eta = torch.tensor([0.1, 0.2, -0.3, 0.5])
    w = torch.exp(eta)
    all_four, last = w.sum(), w[3]
    breslow_ll = (eta[0] - torch.log(all_four)) + (eta[1] - torch.log(all_four)) + (eta[3] - torch.log(last))
    assert cox_loss(eta, time, event, "breslow").item() == pytest.approx(-breslow_ll.item() / 3, rel=1e-6)
    tied = w[0] + w[1]  # the two events at t=1: the second sees half of them gone
    efron_ll = eta[0] + eta[1] - torch.log(all_four) - torch.log(all_four - 0.5 * tied) + eta[3] - torch.log(last)
    assert cox_loss(eta, time, event, "efron").item() == pytest.approx(-efron_ll.item() / 3, rel=1e-6)


def test_cox_loss_without_events_is_zero_and_differentiable():
    eta = torch.tensor([0.3, -0.2], requires_grad=True)
    loss = cox_loss(eta, torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
    loss.backward()
    assert loss.item() == 0.0 and eta.grad is not None


def test_cox_loss_matches_lifelines_partial_likelihood():
    """Efron's log partial likelihood at lifelines' own fit of the Rossi recidivism data (432
    prisoners, weekly times: many ties)."""
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()[["week", "arrest", "fin", "age", "prio"]]
    cph = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest")
    x = rossi[["fin", "age", "prio"]].to_numpy(dtype=np.float64)
    eta = torch.tensor(x @ cph.params_[["fin", "age", "prio"]].to_numpy(), dtype=torch.float64)
    time = torch.tensor(rossi["week"].to_numpy(), dtype=torch.float64)
    event = torch.tensor(rossi["arrest"].to_numpy(), dtype=torch.float64)
    loss = cox_loss(eta, time, event, "efron").item() * float(event.sum())
    assert loss == pytest.approx(-cph.log_likelihood_, rel=1e-5)
    assert cox_loss(eta, time, event, "breslow").item() * float(event.sum()) > loss  # Breslow: a lower likelihood


def test_logistic_hazard_loss_by_hand():
    cuts = torch.tensor([1.0, 2.0])
    logits = torch.tensor([[0.2, -0.4]] * 4)
    h0, h1 = torch.sigmoid(logits[0])
    # event in bin 1; censored in bin 1 (only bin 0 lived through); censored in bin 0; event past
    # the last cut (censored there: both bins lived through)
    time = torch.tensor([1.5, 1.5, 0.5, 3.0])
    event = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = -(torch.log(1 - h0) + torch.log(h1) + torch.log(1 - h0) + 0 + torch.log(1 - h0) + torch.log(1 - h1)) / 4
    assert logistic_hazard_loss(logits, time, event, cuts).item() == pytest.approx(expected.item(), rel=1e-6)
    idx, ev = discretize(time, event, cuts)
    assert idx.tolist() == [1, 0, -1, 1] and ev.tolist() == [True, False, False, False]


def test_null_hazard_logits_are_the_covariate_free_fit():
    """At the offset, the gradient of the likelihood of a network with zero outputs is zero."""
    rng = np.random.default_rng(0)
    time = rng.exponential(10.0, 300)
    event = (rng.random(300) < 0.7).astype(float)
    cuts = bin_cuts(time, event, 8)
    assert len(cuts) == 8 and cuts == sorted(cuts)
    offset = torch.tensor(null_hazard_logits(time, event, cuts), requires_grad=True)
    loss = logistic_hazard_loss(offset.expand(300, -1), torch.tensor(time), torch.tensor(event), torch.tensor(cuts))
    loss.backward()
    assert offset.grad.abs().max().item() < 1e-5


def test_breslow_survival_matches_lifelines():
    from lifelines import CoxPHFitter
    from lifelines.datasets import load_rossi

    rossi = load_rossi()[["week", "arrest", "fin", "age", "prio"]]
    cph = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest")
    x = rossi[["fin", "age", "prio"]]
    eta = x.to_numpy(dtype=np.float64) @ cph.params_[x.columns].to_numpy()
    base = breslow(rossi["week"].to_numpy(float), rossi["arrest"].to_numpy(float), eta)
    times = np.array([5.0, 20.0, 40.0, 52.0])
    ours = cox_survival(base, eta[:10], times)
    theirs = cph.predict_survival_function(x.iloc[:10], times=times).to_numpy().T
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


# ------------------------------------------------------------------ metrics against scikit-survival


@pytest.fixture(scope="module")
def gbsg2():
    """GBSG2 (686 patients) split 70/30, with the risk and survival curves of sksurv's Cox model."""
    from sksurv.datasets import load_gbsg2
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    x, y = load_gbsg2()
    x = OneHotEncoder().fit_transform(x)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:480], order[480:]
    cox = CoxPHSurvivalAnalysis(alpha=0.01).fit(x.iloc[train], y[train])
    return x, y, train, test, cox


def test_metrics_match_sksurv_on_gbsg2(gbsg2):
    x, y, train, test, cox = gbsg2
    risk = cox.predict(x.iloc[test])
    t, e = y["time"][test], y["cens"][test].astype(float)
    censoring = m.Censoring(y["time"][train], y["cens"][train])
    assert m.concordance(t, e, risk) == pytest.approx(sksurv_metrics.concordance_index_censored(e > 0, t, risk)[0])
    for tau in (1000.0, 1500.0, 2000.0):
        ours = m.concordance(t, e, risk, m.uno_weights(t, e, censoring, tau))
        assert ours == pytest.approx(sksurv_metrics.concordance_index_ipcw(y[train], y[test], risk, tau=tau)[0])
    grid = ibs_grid(t, y["time"][train])
    curves = cox.predict_survival_function(x.iloc[test])
    surv = np.array([[f(g) for g in grid] for f in curves])
    assert m.integrated_brier(t, e, surv, grid, censoring) == pytest.approx(
        sksurv_metrics.integrated_brier_score(y[train], y[test], surv, grid))
    np.testing.assert_allclose(m.brier_scores(t, e, surv, grid, censoring),
                               sksurv_metrics.brier_score(y[train], y[test], surv, grid)[1])
    horizons = np.array([365.0, 730.0, 1460.0])
    np.testing.assert_allclose(m.dynamic_auc(t, e, risk, horizons, censoring),
                               sksurv_metrics.cumulative_dynamic_auc(y[train], y[test], risk, horizons)[0])
    surv_h = np.array([[f(h) for h in horizons] for f in curves])  # time-dependent risk: 1 - S(h)
    np.testing.assert_allclose(m.dynamic_auc(t, e, 1 - surv_h, horizons, censoring),
                               sksurv_metrics.cumulative_dynamic_auc(y[train], y[test], 1 - surv_h, horizons)[0])


def test_concordance_with_ties_matches_sksurv():
    """WHAS500 (follow-up in days, tied times) and the veterans' trial (tied times and Karnofsky
    scores as a tied risk)."""
    from sksurv.datasets import load_veterans_lung_cancer, load_whas500

    x, y = load_whas500()
    risk = x["age"].to_numpy(float)
    assert m.concordance(y["lenfol"], y["fstat"].astype(float), risk) == pytest.approx(
        sksurv_metrics.concordance_index_censored(y["fstat"], y["lenfol"], risk)[0])
    x, y = load_veterans_lung_cancer()
    risk = -x["Karnofsky_score"].to_numpy(float)
    assert m.concordance(y["Survival_in_days"], y["Status"].astype(float), risk) == pytest.approx(
        sksurv_metrics.concordance_index_censored(y["Status"], y["Survival_in_days"], risk)[0])


def test_kaplan_meier_and_logrank_match_references(gbsg2):
    from lifelines.statistics import multivariate_logrank_test
    from sksurv.nonparametric import kaplan_meier_estimator

    x, y, _, test, cox = gbsg2
    t, e = y["time"][test], y["cens"][test]
    times, surv = m.kaplan_meier(t, e.astype(float))
    ref_t, ref_s = kaplan_meier_estimator(e, t)
    np.testing.assert_allclose(times, ref_t)
    np.testing.assert_allclose(surv, ref_s)
    risk = cox.predict(x.iloc[test])
    group = np.digitize(risk, np.quantile(risk, [1 / 3, 2 / 3]))
    stat, p = m.logrank(t, e.astype(float), group)
    ref = multivariate_logrank_test(t, group, e)
    assert stat == pytest.approx(ref.test_statistic) and p == pytest.approx(ref.p_value)


# ------------------------------------------------------------------ targets and the task


def _samples(rows: list[list]) -> Samples:
    n = len(rows)
    return Samples(inputs=None, labels=rows, ids=[f"p{i}" for i in range(n)],
                   where={i: f"cohort.csv row {i + 2}" for i in range(n)}, label_columns=["months", "died"])


def test_targets_accept_numbers_and_booleans():
    targets = encode_survival(_samples([["3.5", "1"], ["0", "false"], ["12", "True"], [7, 0]]))
    assert targets.tolist() == [[3.5, 1.0], [0.0, 0.0], [12.0, 1.0], [7.0, 0.0]]


@pytest.mark.parametrize(("cell", "where", "words"), [
    (["-1", "1"], "row 3: column 'months'", ">= 0"),
    (["", "1"], "row 3: column 'months'", "missing"),
    (["nan", "0"], "row 3: column 'months'", "missing"),
    (["abc", "0"], "row 3: column 'months'", "not a number"),
    (["5", "2"], "row 3: column 'died'", "0/1"),
    (["5", ""], "row 3: column 'died'", "0/1"),
])  # fmt: skip
def test_bad_targets_name_the_row_and_column(cell, where, words):
    with pytest.raises(DataError) as err:
        encode_survival(_samples([["1", "1"], cell, ["2", "0"]]))
    message = str(err.value)
    assert where in message and words in message and "\n" not in message


def test_all_censored_is_one_clear_line():
    with pytest.raises(DataError, match="every sample is censored.*'died'"):
        encode_survival(_samples([["1", "0"], ["2", "0"], ["3", "false"]]))


def test_one_label_column_is_a_config_error():
    samples = Samples(inputs=None, labels=["1", "2"], ids=["a", "b"])
    with pytest.raises(ConfigError, match="two label columns"):
        encode_survival(samples)


def test_task_round_trips_and_scores():
    task = SurvivalTask(model="logistic_hazard", horizons=[1.0, 2.0], cuts=[1.0, 2.0, 3.0], offset=[0.0, 0.0, 0.0])
    again = task_from_info(task.info())
    assert again.info() == task.info() and again.out_dim == 3
    outputs = torch.tensor([[-3.0, -3.0, -3.0], [2.0, 2.0, 2.0]])  # low, then high hazard
    preds = task.predictions(outputs).numpy()
    risk = task.risk(preds)
    assert risk[1] > risk[0]
    surv = task.survival(preds, np.array([0.0, 0.5, 1.0, 10.0]))
    assert surv[:, 0].tolist() == [1.0, 1.0] and (np.diff(surv, axis=1) <= 0).all()
    assert surv[0, 2] == pytest.approx(1 / (1 + math.exp(-3.0)))  # S(c_1) = 1 - h_1
    targets = np.array([[0.5, 1.0], [2.5, 0.0]])  # the high-hazard sample should fail first
    assert task.quick_metrics(preds[::-1].copy(), targets)["c_index"] == 1.0
    assert get_task("survival").quick_metric_names == ("c_index",)


def test_cox_task_needs_its_baseline_for_survival():
    task = SurvivalTask(model="cox", horizons=[1.0])
    with pytest.raises(Exception, match="baseline"):
        task.survival(np.zeros(2), np.array([1.0]))


class _Rows:
    """A dataset of built batches (`__getitems__`), as a modality gives them."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[indices], torch.zeros(len(indices), 2)


def test_classical_cox_only_for_flat_features(gbsg2):
    from biomx.tasks.survival.baseline import (
        MAX_FEATURES,
        cox_ph_predict,
        fit_cox_ph,
        flat_features,
    )

    assert flat_features(_Rows(torch.zeros(4, 1, 8, 8))) is None  # images: no linear baseline
    assert flat_features(_Rows(torch.zeros(4, 100, dtype=torch.long))) is None  # token ids
    x, y, train, test, _ = gbsg2
    features = x.to_numpy(dtype=np.float64)
    assert flat_features(_Rows(torch.tensor(features))).shape == features.shape
    fitted, note = fit_cox_ph(features[train], y["time"][train], y["cens"][train].astype(float))
    assert fitted is not None and "CoxPHFitter" in note
    risk, surv = cox_ph_predict(fitted, features[test], np.array([365.0, 1095.0]))
    assert m.concordance(y["time"][test], y["cens"][test].astype(float), risk) > 0.6
    assert surv.shape == (len(test), 2) and (surv[:, 0] >= surv[:, 1]).all()
    wide = np.random.default_rng(0).normal(size=(50, MAX_FEATURES + 1))
    fitted, note = fit_cox_ph(wide, np.arange(50.0), np.ones(50))
    assert fitted is None and "no linear baseline" in note


def test_classical_cox_reads_level_codes_as_levels():
    """An encoded categorical (level codes 1, 2, 3) whose middle level carries the risk: a linear
    model on the codes as numbers cannot rank it; one indicator per level can."""
    from biomx.tasks.survival.baseline import cox_ph_predict, fit_cox_ph

    rng = np.random.default_rng(0)
    code = rng.integers(1, 4, size=400).astype(np.float64)
    x = np.column_stack([code, rng.normal(size=400)])  # a standardised number beside it
    time = rng.exponential(1.0 / np.exp(2.0 * (code == 2)))
    event = np.ones(400)
    fitted, note = fit_cox_ph(x[:300], time[:300], event[:300])
    assert "1 coded as levels (one-hot)" in note
    risk, _ = cox_ph_predict(fitted, x[300:], np.zeros(1))
    assert m.concordance(time[300:], event[300:], risk) > 0.65


def test_horizons_must_increase():
    from pydantic import ValidationError

    from biomx.tasks.survival.config import SurvivalConfig

    assert SurvivalConfig(horizons=[1, 2.5]).horizons == [1, 2.5]
    with pytest.raises(ValidationError, match="strictly increasing"):
        SurvivalConfig(horizons=[5, 2])
