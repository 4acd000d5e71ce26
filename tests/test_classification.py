"""Tests for biomx.tasks.classification.task: metrics against sklearn, CIs, calibration, losses."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler, label_binarize
from sklearn.utils.class_weight import compute_class_weight

from biomx.errors import ConfigError, DataError
from biomx.tasks.classification import build_task, class_weights_from_counts
from biomx.tasks.classification.metrics import METRICS, auroc, average_precision


def _fit_predict(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities of a logistic regression (real data, imperfect model)."""
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.4, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_tr)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(x_tr), y_tr)
    return model.predict_proba(scaler.transform(x_te)), y_te


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    probs, y_te = _fit_predict(x[:, :2], y)  # two features only, so the model makes mistakes
    return probs[:, 1], y_te


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_wine(return_X_y=True)
    return _fit_predict(x[:, :2], y)


def _values(result: dict) -> dict[str, float]:
    return {name: m["value"] for name, m in result["metrics"].items()}


def test_binary_metrics_match_sklearn(breast_cancer):
    p, y = breast_cancer
    task = build_task("binary", ["malignant", "benign"])
    result = task.evaluate(p, y, n_bootstrap=50)
    got, pred = _values(result), (p >= 0.5).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert 0 < fp + fn  # a non-trivial case
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "auroc": skm.roc_auc_score(y, p),
        "auprc": skm.average_precision_score(y, p),
        "f1": skm.f1_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "precision": skm.precision_score(y, pred),
        "npv": skm.precision_score(y, pred, pos_label=0),
        "brier": skm.brier_score_loss(y, p),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert result["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert result["curves"]["roc"]["benign"]["auc"] == pytest.approx(expected["auroc"])
    assert result["per_class"]["malignant"]["support"] == int((y == 0).sum())
    assert task.quick_metrics(p, y) == {m: got[m] for m in task.quick_metrics(p, y)}
    json.dumps(result)  # plain JSON types throughout


def test_multiclass_metrics_match_sklearn(wine):
    probs, y = wine
    task = build_task("multiclass", ["a", "b", "c"])
    result = task.evaluate(probs, y, n_bootstrap=50)
    got, pred = _values(result), probs.argmax(axis=1)
    cm = skm.confusion_matrix(y, pred)
    assert 0.5 < got["accuracy"] < 1.0  # a non-trivial case
    # Macro one-vs-rest specificity by hand from the confusion matrix.
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=0) - cm.sum(axis=1) + np.diag(cm)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "auroc": skm.roc_auc_score(y, probs, multi_class="ovr"),
        "auprc": skm.average_precision_score(label_binarize(y, classes=[0, 1, 2]), probs),
        "f1": skm.f1_score(y, pred, average="macro"),
        "sensitivity": skm.recall_score(y, pred, average="macro"),
        "specificity": np.mean(tn / (tn + fp)),
        "precision": skm.precision_score(y, pred, average="macro"),
        "brier": skm.brier_score_loss(y, probs),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert result["confusion_matrix"] == cm.tolist()
    assert set(result["curves"]["roc"]) == {"a", "b", "c"}
    per_class_auc = skm.roc_auc_score(y == 1, probs[:, 1])
    assert result["per_class"]["b"]["auroc"] == pytest.approx(per_class_auc)


def test_macro_precision_counts_never_predicted_class_as_zero():
    task = build_task("multiclass", ["a", "b", "c"])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.3, 0.4, 0.3]])
    y, pred = np.array([0, 1, 2, 2]), probs.argmax(axis=1)  # class c is never predicted
    got = task.quick_metrics(probs, y)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    result = task.evaluate(probs, y, n_bootstrap=0)["metrics"]
    expected = skm.precision_score(y, pred, average="macro", zero_division=0)
    assert result["precision"]["value"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_fast_auroc_and_ap_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    scores = rng.integers(0, 6, 300).astype(float)  # heavy ties
    assert auroc(y, scores) == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert average_precision(y, scores) == pytest.approx(
        skm.average_precision_score(y, scores), abs=1e-12)
    # Vectorised over a leading axis, rows give the same values as one at a time.
    batch_y, batch_s = np.stack([y, ~y]), np.stack([scores, -scores])
    assert auroc(batch_y, batch_s)[1] == pytest.approx(skm.roc_auc_score(~y, -scores))


def test_fast_auroc_undefined_is_nan():
    assert math.isnan(auroc(np.zeros(5, dtype=bool), np.arange(5.0)))
    assert math.isnan(average_precision(np.zeros(5, dtype=bool), np.arange(5.0)))


def _synthetic_binary(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(2.0 * y - 1.0 + rng.normal(0, 1.5, n))))
    return p, y


def test_ci_contains_point_estimate_and_narrows_with_n():
    task = build_task("binary", ["neg", "pos"])
    small = task.evaluate(*_synthetic_binary(100), n_bootstrap=300)["metrics"]
    large = task.evaluate(*_synthetic_binary(2000), n_bootstrap=300)["metrics"]
    for name in METRICS:
        m = small[name]
        assert m["ci_low"] <= m["value"] <= m["ci_high"], name
        width_small = m["ci_high"] - m["ci_low"]
        width_large = large[name]["ci_high"] - large[name]["ci_low"]
        assert width_large < 0.6 * width_small, name  # 1/sqrt(20) ~ 0.22 in theory


def test_ci_is_the_percentile_interval_of_resampled_cases():
    task = build_task("binary", ["neg", "pos"])
    p, y = _synthetic_binary(200)
    got = task.evaluate(p, y, n_bootstrap=400, ci=0.9, seed=3)["metrics"]["accuracy"]
    # Reference: the same seeded resamples, scored one way with plain numpy.
    idx = np.random.default_rng(3).integers(0, 200, size=(400, 200))
    acc = ((p[idx] >= 0.5) == y[idx]).mean(axis=1)
    assert got["ci_low"] == pytest.approx(np.percentile(acc, 5))
    assert got["ci_high"] == pytest.approx(np.percentile(acc, 95))


def test_bootstrap_is_reproducible():
    task = build_task("binary", ["neg", "pos"])
    p, y = _synthetic_binary(200)
    first = task.evaluate(p, y, n_bootstrap=200, seed=7)["metrics"]
    assert task.evaluate(p, y, n_bootstrap=200, seed=7)["metrics"] == first
    assert task.evaluate(p, y, n_bootstrap=200, seed=8)["metrics"]["auroc"] != first["auroc"]


def test_evaluate_is_fast_enough():
    task = build_task("binary", ["neg", "pos"])
    p, y = _synthetic_binary(800)
    start = time.perf_counter()
    task.evaluate(p, y, n_bootstrap=1000)
    assert time.perf_counter() - start < 5.0


def test_ece_hand_computed_and_calibration_bins():
    task = build_task("binary", ["neg", "pos"])
    p, y = np.array([0.1, 0.1, 0.9, 0.9]), np.array([0, 1, 1, 1])
    result = task.evaluate(p, y, n_bootstrap=0)
    # bin 1: |0.2 - 1| ; bin 9: |1.8 - 2|  -> (0.8 + 0.2) / 4
    assert result["metrics"]["ece"]["value"] == pytest.approx(0.25)
    cal = result["calibration"]
    assert cal["bin_count"] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert cal["bin_frequency"][1] == pytest.approx(0.5) and math.isnan(cal["bin_frequency"][0])
    assert math.isnan(result["metrics"]["ece"]["ci_low"])  # n_bootstrap=0: no interval
    # Multiclass uses the top-class probability vs correctness: |0.7 - 1| and |0.6 - 0|.
    mc = build_task("multiclass", ["a", "b", "c"])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2]])
    assert mc.quick_metrics(probs, np.array([0, 0]))["accuracy"] == 0.5
    ece = mc.evaluate(probs, np.array([0, 0]), n_bootstrap=0)["metrics"]["ece"]["value"]
    assert ece == pytest.approx((0.3 + 0.6) / 2)


def test_ece_small_when_calibrated_large_when_overconfident():
    rng = np.random.default_rng(0)
    true_p = rng.random(100_000)
    y = (rng.random(100_000) < true_p).astype(int)
    task = build_task("binary", ["neg", "pos"])
    calibrated = task.evaluate(true_p, y, n_bootstrap=0)["calibration"]["ece"]
    overconfident = np.where(true_p > 0.5, 0.99, 0.01)
    bad = task.evaluate(overconfident, y, n_bootstrap=0)["calibration"]["ece"]
    assert calibrated < 0.01
    assert bad > 0.2  # expected ~0.24: reported 0.99 where the true rate averages 0.75


def test_binary_loss_class_weights_and_smoothing():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 1), torch.randint(0, 2, (16,)).float()
    plain = build_task("binary", ["neg", "pos"]).loss(logits, y)
    weighted = build_task("binary", ["neg", "pos"], class_weights=[0.5, 2.0]).loss(logits, y)
    x, log_sig = logits[:, 0], F.logsigmoid(logits[:, 0])
    log_not = F.logsigmoid(-x)
    # Reference: BCE with pos_weight = w_pos / w_neg = 4, written out.
    assert weighted.item() == pytest.approx(-(4.0 * y * log_sig + (1 - y) * log_not).mean().item())
    assert plain.item() == pytest.approx(-(y * log_sig + (1 - y) * log_not).mean().item())
    assert weighted.item() != pytest.approx(plain.item())
    smooth = build_task("binary", ["neg", "pos"], label_smoothing=0.2).loss(logits[:, 0], y)
    ys = y * 0.8 + 0.1
    assert smooth.item() == pytest.approx(-(ys * log_sig + (1 - ys) * log_not).mean().item())


def test_multiclass_loss_class_weights_and_smoothing():
    torch.manual_seed(0)
    logits, y = torch.randn(20, 3), torch.randint(0, 3, (20,))
    w = torch.tensor([1.0, 2.0, 0.5])
    logp = torch.log_softmax(logits, dim=1)
    nll = -logp[torch.arange(20), y]
    weighted = build_task("multiclass", list("abc"), class_weights=w.tolist()).loss(logits, y)
    assert weighted.item() == pytest.approx(((w[y] * nll).sum() / w[y].sum()).item())
    smooth = build_task("multiclass", list("abc"), label_smoothing=0.3).loss(logits, y)
    expected = (0.7 * nll + 0.3 * (-logp.mean(dim=1))).mean()
    assert smooth.item() == pytest.approx(expected.item())
    assert weighted.item() != pytest.approx(smooth.item())


def test_multilabel_shapes_loss_and_outputs():
    task = build_task("multilabel", ["effusion", "nodule", "mass"], class_weights=[1.0, 3.0, 2.0])
    assert task.out_dim == 3
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.randint(0, 2, (8, 3)).float()
    pw = torch.tensor([1.0, 3.0, 2.0])
    ref = -(pw * y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()
    assert task.loss(logits, y).item() == pytest.approx(ref.item())
    probs = task.probabilities(logits).numpy()
    assert probs.shape == (8, 3) and task.predict_labels(probs).shape == (8, 3)
    result = task.evaluate(probs, y.numpy(), n_bootstrap=20)
    assert set(result["confusion_matrix"]["per_label"]) == {"effusion", "nodule", "mass"}
    cm = result["confusion_matrix"]["per_label"]["nodule"]
    assert cm == skm.confusion_matrix(y[:, 1].numpy(), probs[:, 1] >= 0.5).tolist()
    hamming = 1 - skm.hamming_loss(y.numpy(), probs >= 0.5)
    assert result["metrics"]["accuracy"]["value"] == pytest.approx(hamming)
    cols = task.prediction_columns(np.array([[0.9, 0.1, 0.7], [0.1, 0.2, 0.3]]))
    assert list(cols["predicted"]) == ["effusion|mass", ""]


def test_binary_shapes_and_prediction_columns():
    task = build_task("binary", ["normal", "pneumonia"], threshold=0.3)
    assert task.out_dim == 1
    logits = torch.tensor([[-2.0], [0.0], [1.0]])
    probs = task.probabilities(logits)
    assert probs.shape == (3,)
    assert torch.allclose(probs, torch.sigmoid(logits[:, 0]))
    cols = task.prediction_columns(np.array([0.2, 0.35]))
    assert cols["prob_normal"] == pytest.approx([0.8, 0.65])
    assert list(cols["predicted"]) == ["normal", "pneumonia"]  # threshold 0.3, not 0.5


def test_undefined_metrics_are_nan_not_errors():
    task = build_task("binary", ["neg", "pos"])
    p, y = np.array([0.2, 0.7, 0.4]), np.zeros(3, dtype=int)
    quick = task.quick_metrics(p, y)
    assert math.isnan(quick["auroc"]) and math.isnan(quick["balanced_accuracy"])
    assert quick["accuracy"] == pytest.approx(2 / 3)
    result = task.evaluate(p, y, n_bootstrap=20)
    assert math.isnan(result["metrics"]["auroc"]["ci_low"])
    assert result["curves"] == {"roc": {}, "pr": {}}
    assert all(math.isnan(v) for v in task.quick_metrics(np.zeros(0), np.zeros(0)).values())
    diverged = task.quick_metrics(np.array([np.nan, 0.2]), np.array([0, 1]))
    assert all(math.isnan(v) for v in diverged.values())
    with pytest.raises(DataError, match="NaN"):
        task.evaluate(np.array([np.nan, 0.2]), np.array([0, 1]))


def test_bad_inputs_raise_data_error():
    task = build_task("multiclass", ["a", "b", "c"])
    with pytest.raises(DataError, match="expected \\(2, 3\\)"):
        task.evaluate(np.ones((2, 2)) / 2, np.array([0, 1]))
    with pytest.raises(DataError, match="targets must be in"):
        task.quick_metrics(np.ones((2, 3)) / 3, np.array([0, 3]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "regression"}, "task.kind"),
        ({"classes": ["only"]}, "task.classes"),
        ({"classes": ["a", "b", "c"]}, "task.classes: binary needs exactly 2"),
        ({"classes": ["a", "a"]}, "task.classes"),
        ({"class_weights": [1.0, 2.0, 3.0]}, "task.class_weights: expected 2 values"),
        ({"class_weights": [1.0, 0.0]}, "task.class_weights"),
        ({"class_weights": "balanced"}, "task.class_weights"),
        ({"label_smoothing": 1.0}, "task.label_smoothing"),
        ({"label_smoothing": "0.1"}, "task.label_smoothing"),
        ({"threshold": 0.0}, "task.threshold"),
    ],
)
def test_build_task_errors_name_the_key(kwargs, message):
    args = {"kind": "binary", "classes": ["neg", "pos"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_task(**args)


def test_class_weights_from_counts():
    y = np.array([0, 0, 0, 1])
    assert class_weights_from_counts(y, "binary", 2) == pytest.approx([4 / 6, 4 / 2])
    y3 = np.array([0, 1, 1, 2, 2, 2, 2])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y3)
    assert class_weights_from_counts(y3, "multiclass", 3) == pytest.approx(expected)
    ml = np.array([[1, 0], [0, 1], [0, 1], [0, 0]])
    assert class_weights_from_counts(ml, "multilabel", 2) == pytest.approx([3.0, 1.0])
    with pytest.raises(DataError, match="class 2"):
        class_weights_from_counts(np.array([0, 1]), "multiclass", 3)
