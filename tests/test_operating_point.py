"""Operating points and decision curves (docs/trust.md): the threshold rules on hand-computed
examples, net benefit against its closed forms, and a tiny real run whose chosen threshold
`biomx predict`, `biomx.load` and the export graph use."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from biomx.cli import main
from biomx.errors import ConfigError
from biomx.export.graph import load_graph
from biomx.predictor import load
from biomx.tasks.classification import build_task
from biomx.tasks.classification.decision_curve import (
    THRESHOLDS,
    decision_curve,
    net_benefit,
    treat_all,
)
from biomx.tasks.classification.operating_point import at_threshold, choose, score_points, select

pytestmark = pytest.mark.usefixtures("one_thread")

# Eight validation cases: 4 negatives, 4 positives.
PROBS = np.array([0.05, 0.15, 0.3, 0.45, 0.5, 0.6, 0.8, 0.9])
Y = np.array([0, 0, 1, 0, 0, 1, 1, 1])


def test_youden_threshold_equals_the_hand_computed_one():
    # Calling >= 0.6 positive: 3 of 4 positives, 0 false positives, J = 0.75, the only maximum
    # (>= 0.8: 0.5; >= 0.5: 0.5; >= 0.45: 0.25; >= 0.3: 0.5). Halfway to the next score: 0.55.
    assert choose(PROBS, Y, "youden") == pytest.approx(0.55)
    found = at_threshold(PROBS, Y, 0.55)
    assert (found["tp"], found["fp"], found["tn"], found["fn"]) == (3, 0, 4, 1)
    # Agrees with the maximum of J along sklearn's ROC curve on random scores.
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.35 * y + 0.65 * rng.random(500), 0, 1)
    fpr, tpr, _ = roc_curve(y, p)
    best = at_threshold(p, y, choose(p, y, "youden"))
    assert best["sensitivity"] + best["specificity"] - 1 == pytest.approx(np.max(tpr - fpr))


def test_target_rules_reach_their_target_on_validation():
    # Sensitivity 1.0 needs the positive at 0.3: threshold halfway to 0.15.
    assert choose(PROBS, Y, "sensitivity", 1.0) == pytest.approx(0.225)
    assert choose(PROBS, Y, "sensitivity", 0.75) == pytest.approx(0.55)  # the highest that reaches 3/4
    assert choose(PROBS, Y, "specificity", 1.0) == pytest.approx(0.55)  # the lowest with no false positive
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.3 * y + 0.7 * rng.random(400), 0, 1)
    for target in (0.8, 0.9, 0.95, 0.99):
        sens = at_threshold(p, y, choose(p, y, "sensitivity", target))
        spec = at_threshold(p, y, choose(p, y, "specificity", target))
        assert sens["sensitivity"] >= target and spec["specificity"] >= target
    assert choose(p, np.ones_like(y), "youden") is None  # one class: no rule applies


def test_selection_sets_the_threshold_and_keeps_the_configured_one():
    task = build_task("binary", ["neg", "pos"], operating_point={"rule": "youden"})
    record = select(task, PROBS, Y)
    assert task.threshold == pytest.approx(0.55) and task.task_threshold == 0.5
    assert record["chosen_on"] == "validation" and set(record["points"]) >= {"chosen", "task.threshold"}
    again = select(task, None, None)  # no validation split: the configured threshold, with a note
    assert task.threshold == 0.5 and "no validation split" in again["note"]
    # The run.json entry carries both, and rebuilds the task with the chosen threshold.
    select(task, PROBS, Y)
    from biomx.tasks import task_from_info

    rebuilt = task_from_info(task.info())
    assert (rebuilt.threshold, rebuilt.task_threshold, rebuilt.rule) == (pytest.approx(0.55), 0.5, "youden")


def test_test_points_have_intervals_around_their_counts():
    (point,) = score_points(PROBS, Y, [0.55], n_boot=200, ci=0.9, seed=0)
    assert point["counts"] == {"tp": 3, "fp": 0, "tn": 4, "fn": 1}
    sens = point["metrics"]["sensitivity"]
    assert sens["value"] == 0.75 and sens["ci_low"] <= 0.75 <= sens["ci_high"] and sens["ci_low"] < sens["ci_high"]


def test_net_benefit_of_a_perfect_classifier_is_the_prevalence():
    y = np.array([1] * 30 + [0] * 70)
    np.testing.assert_allclose(net_benefit(y.astype(float), y), 0.3)
    # Calling everyone positive is treat-all: prevalence - (1 - prevalence) * pt / (1 - pt).
    np.testing.assert_allclose(net_benefit(np.ones(100), y), treat_all(0.3))
    np.testing.assert_allclose(treat_all(0.3, np.array([0.3, 0.5])), [0.0, 0.3 - 0.7])
    np.testing.assert_allclose(net_benefit(np.zeros(100), y), 0.0)  # treat none
    curve = decision_curve(np.where(y == 1, 0.9, 0.2), y, n_boot=100, ci=0.95, seed=0)
    assert len(curve["pt"]) == len(THRESHOLDS) == 99 and curve["prevalence"] == 0.3
    j = curve["pt"].index(0.5)
    assert curve["model"][j] == pytest.approx(0.3) and curve["ci_low"][j] <= 0.3 <= curve["ci_high"][j]


def test_bad_operating_point_settings_are_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="task.operating_point.rule: youden chooses a threshold, and a multiclass"):
        build_task("multiclass", ["a", "b", "c"], operating_point={"rule": "youden"})
    with pytest.raises(ConfigError, match="task.operating_point.target"):
        build_task("binary", ["a", "b"], operating_point={"rule": "youden", "target": 0.9})
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {source: folder, path: x, image: {size: [28, 28]}}\n"
                   "task: {operating_point: {rule: sensitivty}}\n")
    assert main(["train", str(cfg)]) != 0
    err = capsys.readouterr().err.strip()
    assert "task.operating_point.rule" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------- a tiny real run


@pytest.fixture(scope="module")
def youden_run(tmp_path_factory, png_folder) -> Path:
    """1 epoch of a small CNN on 160 chest X-rays, the threshold chosen by Youden's J on validation."""
    root = tmp_path_factory.mktemp("op")
    cfg = root / "op.yaml"
    cfg.write_text(
        f"name: op\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "task: {operating_point: {rule: youden}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        "eval: {bootstrap: 50, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: op, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / "op"


def _predict(run: Path, files: list[Path], out: Path) -> list[dict[str, str]]:
    assert main(["predict", str(run), *map(str, files), "-o", str(out)]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def test_run_keeps_its_operating_point_and_predict_uses_it(youden_run, png_folder, tmp_path):
    point = json.loads((youden_run / "operating_point.json").read_text())
    threshold = point["threshold"]
    assert point["rule"] == "youden" and point["chosen_on"] == "validation" and 0 < threshold < 1
    chosen = point["points"]["chosen"]
    assert set(chosen["test"]["metrics"]) >= {"sensitivity", "specificity", "ppv", "npv", "f1"}
    assert "validation" in chosen and {"sensitivity >= 0.95", "specificity >= 0.95"} <= set(point["points"])
    metrics = json.loads((youden_run / "test_metrics.json").read_text())
    assert metrics["threshold"] == threshold and metrics["operating_point"]["threshold"] == threshold
    run_info = json.loads((youden_run / "run.json").read_text())
    assert run_info["task"]["threshold"] == threshold and run_info["task"]["operating_point"]["rule"] == "youden"
    with open(youden_run / "decision_curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 99 and set(rows[0]) >= {"threshold_probability", "net_benefit", "treat_all", "treat_none"}
    report = (youden_run / "report.html").read_text()
    assert "Operating point" in report and "Decision curve" in report

    files = sorted(png_folder.rglob("*.png"))[:40]
    rows = _predict(youden_run, files, tmp_path / "a.csv")
    probs = np.array([float(r["prob_pneumonia"]) for r in rows])
    assert [r["predicted"] for r in rows] == ["pneumonia" if p >= threshold else "normal" for p in probs]
    assert load(youden_run).predict(files).tolist() == [r["predicted"] for r in rows]
    assert load_graph(youden_run).task.threshold == threshold  # what the export and the server label with
    assert main(["evaluate", str(youden_run)]) == 0  # re-evaluating chooses the same threshold again
    assert json.loads((youden_run / "run.json").read_text())["task"]["threshold"] == threshold

    # Another saved threshold flips labels: predict reads it from the run.
    moved = next(q for q in np.quantile(probs, [0.5, 0.25, 0.75]) if (probs >= q).sum() != (probs >= threshold).sum())
    run_info["task"]["threshold"] = moved
    (youden_run / "run.json").write_text(json.dumps(run_info))
    try:
        again = _predict(youden_run, files, tmp_path / "b.csv")
    finally:
        run_info["task"]["threshold"] = threshold
        (youden_run / "run.json").write_text(json.dumps(run_info))
    assert [r["predicted"] for r in again] == ["pneumonia" if p >= moved else "normal" for p in probs]
    assert [r["predicted"] for r in again] != [r["predicted"] for r in rows]


def test_multilabel_labels_get_their_own_thresholds_on_measured_cases():
    # Two assays with missing cells (NaN): each label's threshold from its measured validation cases.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (300, 2)).astype(float)
    probs = np.clip(np.stack([0.2 + 0.5 * y[:, 0], 0.05 + 0.2 * y[:, 1]], 1) + 0.3 * rng.random((300, 2)), 0, 1)
    y[rng.random((300, 2)) < 0.3] = np.nan
    task = build_task("multilabel", ["a", "b"], operating_point={"rule": "sensitivity", "target": 0.9})
    from biomx.tasks.classification.operating_point import select_labels

    record = select_labels(task, probs[:150], y[:150])
    for k, name in enumerate("ab"):
        seen = ~np.isnan(y[:150, k])
        expected = choose(probs[:150][seen, k], y[:150][seen, k], "sensitivity", 0.9)
        assert record["labels"][name]["threshold"] == task.label_thresholds[k] == expected
        assert record["labels"][name]["validation"]["sensitivity"] >= 0.9
    assert task.label_thresholds[1] < 0.5 < task.label_thresholds[0]  # label b scores low: a low threshold
    labels = task.predict_labels(probs[150:])
    assert (labels == (probs[150:] >= np.array(task.label_thresholds))).all()
    evaluation = task.evaluate(probs[150:], y[150:], n_bootstrap=50)
    assert set(evaluation["operating_point"]["labels"]["b"]["test"]["metrics"]) >= {"sensitivity", "ppv"}
    from biomx.tasks import task_from_info

    assert task_from_info(task.info()).label_thresholds == task.label_thresholds
    with pytest.raises(ConfigError, match="multiclass task"):
        build_task("multiclass", ["a", "b", "c"], operating_point={"rule": "sensitivity"})
