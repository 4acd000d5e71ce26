"""Detection metrics: FROC/CPM and per-size sensitivity on hand-computed cases, mAP on hand-computed
cases and against MONAI's COCOMetric (nnDetection's port of pycocotools), bootstrap CIs over cases."""

from __future__ import annotations

import numpy as np
import pytest

from biomx.tasks.detection.metrics import (
    average_precision,
    bootstrap_ci,
    box_diameters,
    froc,
    hit_matrix,
    mean_average_precision,
    per_size_sensitivity,
    sensitivity_at,
)


def _box(c, r=2.0):
    c = np.asarray(c, float)
    return np.concatenate([c - r, c + r])[None]


def test_hit_rules():
    true = np.array([[0, 0, 10, 10]], float)
    pred = np.array([[5, 5, 30, 30], [1, 1, 9, 9]], float)  # centre (17.5, 17.5) outside, IoU 25/700; IoU 64/100
    np.testing.assert_array_equal(hit_matrix(pred, true), [[False], [True]])
    np.testing.assert_array_equal(hit_matrix(pred, true, 0.5), [[False], [True]])
    np.testing.assert_array_equal(hit_matrix(pred, true, 0.03), [[True], [True]])
    with pytest.raises(ValueError, match="hit must be"):
        hit_matrix(pred, true, "centre")


def test_froc_hand_computed():
    # case 1: two lesions; hits at 0.9 (lesion A) and 0.3 (lesion B), a second hit on A at 0.8 (ignored),
    #         false positives at 0.7 and 0.2. case 2: negative, one false positive at 0.5.
    a, b = _box([10, 10, 10]), _box([30, 30, 30])
    preds = [(np.concatenate([a, a + 0.5, b, _box([50, 50, 50]), _box([60, 60, 60])]), [0.9, 0.8, 0.3, 0.7, 0.2]),
             (_box([20, 20, 20]), [0.5])]
    truths = [np.concatenate([a, b]), np.zeros((0, 6))]
    out = froc(preds, truths)
    # thresholds 0.9 .. 0.2: (fps per case, sensitivity)
    fps, sens = out["curve"]
    np.testing.assert_allclose(fps, [0, 0, 0.5, 1.0, 1.0, 1.5])
    np.testing.assert_allclose(sens, [0, 0.5, 0.5, 0.5, 1.0, 1.0])
    at = out["sensitivity_at"]
    assert at[0.125] == at[0.25] == at[0.5] == 0.5 and at[1.0] == at[2.0] == at[8.0] == 1.0
    assert out["mean_sensitivity"] == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)
    assert out["n_true"] == 2 and out["n_cases"] == 2
    # LUNA16's linear interpolation between the best operating points: (0.5, 0.5) .. (1.0, 1.0)
    assert sensitivity_at(fps, sens, 0.75, "linear") == pytest.approx(0.75)
    assert sensitivity_at(fps, sens, 0.75) == 0.5  # the step reading: no threshold gives more at <= 0.75
    linear = froc(preds, truths, interpolation="linear")["sensitivity_at"]
    assert linear[0.125] == pytest.approx(0.5) and linear[8.0] == 1.0
    # no lesions at all: undefined, not zero
    assert np.isnan(froc([(np.zeros((0, 6)), [])], [np.zeros((0, 6))])["mean_sensitivity"])


def test_froc_with_iou_hits_and_missed_lesions():
    true = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)]
    pred = [(np.array([[0, 0, 10, 12]], float), [0.6])]  # IoU 100/120 with the first; the second missed
    out = froc(pred, true, hit=0.5)
    assert set(out["sensitivity_at"].values()) == {0.5}
    assert froc(pred, true, hit=0.9)["mean_sensitivity"] == 0.0


def test_average_precision_hand_computed():
    # 3 true boxes; ranked predictions TP, FP, TP: precision 1, .5, .667; recall 1/3, 1/3, 2/3
    tp, scores = np.array([True, False, True]), np.array([0.9, 0.8, 0.7])
    # all-point: envelope 1 up to recall 1/3, 2/3 up to recall 2/3 -> 1/3 + 2/9
    assert average_precision(tp, scores, 3, "all") == pytest.approx(1 / 3 + 2 / 9)
    # 101-point: recalls 0..0.33 (34 points) at 1, 0.34..0.66 (33 points) at 2/3, the rest 0
    assert average_precision(tp, scores, 3) == pytest.approx((34 * 1 + 33 * 2 / 3) / 101)
    assert np.isnan(average_precision(tp, scores, 0))
    assert average_precision(np.zeros(0, bool), np.zeros(0), 3) == 0.0  # nothing predicted


def test_map_and_froc_with_no_predictions_at_all():
    truths = [(np.array([[0, 0, 4, 4]], float), [0]), (np.zeros((0, 4)), [])]
    empty = [([], [], []), (np.zeros((0, 4)), [], [])]
    assert mean_average_precision(empty, truths)["map_at"] == {0.1: 0.0, 0.5: 0.0}
    out = froc([(b, s) for b, s, _ in empty], [t for t, _ in truths])
    assert out["mean_sensitivity"] == 0.0 and out["n_true"] == 1


def test_map_one_to_one_matching_and_classes():
    true = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), [0, 1])]
    # two predictions on the same class-0 box: the second is a false positive; class 1 box found
    pred = [(np.array([[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30]], float), [0.9, 0.8, 0.7], [0, 0, 1])]
    out = mean_average_precision(pred, true, iou_thresholds=(0.5,), interpolation="all")
    assert out["ap"][0.5] == {0: 1.0, 1: 1.0} and out["map"] == 1.0
    # the class-1 box predicted as class 0: class 1 AP 0, class 0 AP 1 (its FP ranks below its TP)
    pred = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), [0.9, 0.7], [0, 0])]
    out = mean_average_precision(pred, true, iou_thresholds=(0.5,), interpolation="all")
    assert out["ap"][0.5] == {0: 1.0, 1: 0.0} and out["map_at"][0.5] == 0.5


@pytest.mark.parametrize("dims", [2, 3])
def test_map_agrees_with_monai_coco_metric(dims):
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou as monai_iou

    rng = np.random.default_rng(dims)
    preds, truths = [], []
    for _ in range(12):
        n_true = int(rng.integers(0, 5))
        lo = rng.uniform(0, 50, size=(n_true, dims))
        true = np.concatenate([lo, lo + rng.uniform(4, 12, size=(n_true, dims))], axis=1)
        tl = rng.integers(0, 2, n_true)
        jitter = true + rng.normal(0, 1.5, size=true.shape)  # noisy copies of some true boxes
        keep = rng.uniform(size=n_true) < 0.8
        n_fp = int(rng.integers(0, 4))
        lo = rng.uniform(0, 50, size=(n_fp, dims))
        fp = np.concatenate([lo, lo + rng.uniform(4, 12, size=(n_fp, dims))], axis=1)
        boxes = np.concatenate([jitter[keep], fp])
        boxes = np.concatenate([boxes[:, :dims], np.maximum(boxes[:, dims:], boxes[:, :dims] + 1)], axis=1)
        labels = np.concatenate([tl[keep], rng.integers(0, 2, n_fp)])
        preds.append((boxes, rng.uniform(size=len(boxes)), labels))
        truths.append((true, tl))
    ours = mean_average_precision(preds, truths, iou_thresholds=(0.1, 0.5))
    metric = COCOMetric(classes=["c0", "c1"], iou_list=(0.1, 0.5), iou_range=(0.1, 0.5, 0.4), max_detection=(1000,),
                        verbose=False)  # fmt: skip
    matched = matching_batch(iou_fn=monai_iou, iou_thresholds=metric.iou_thresholds,
                             pred_boxes=[p[0] for p in preds], pred_classes=[p[2] for p in preds],
                             pred_scores=[p[1] for p in preds], gt_boxes=[t[0] for t in truths],
                             gt_classes=[t[1] for t in truths], max_detections=1000)  # fmt: skip
    reference = metric(matched)[0]
    # MONAI accumulates recall in float32, so a recall that falls exactly on one of the 101 grid
    # points (k/n == p/100) may land on the other side of it than in float64 (pycocotools, biomx):
    # replicating that float32 step reproduces MONAI to 1e-12; it moves AP by < 1e-4 here.
    for iou in (0.1, 0.5):
        assert ours["map_at"][iou] == pytest.approx(reference[f"AP_IoU_{iou:.2f}_MaxDet_1000"], abs=1e-4)
        for c in (0, 1):
            assert ours["ap"][iou][c] == pytest.approx(reference[f"c{c}_AP_IoU_{iou:.2f}_MaxDet_1000"], abs=1e-4)
    assert 0.2 < ours["map_at"][0.1] <= 1.0  # a non-trivial case


def test_per_size_sensitivity():
    small, big = _box([10, 10, 10], r=1.0), _box([40, 40, 40], r=5.0)  # diameters 2 and 10 voxels
    truths = [np.concatenate([small, big]), np.concatenate([_box([70, 70, 70], r=1.0)])]
    preds = [(np.concatenate([big, _box([90, 90, 90])]), [0.8, 0.6]), (np.zeros((0, 6)), [])]
    rows = per_size_sensitivity(preds, truths, bins=[0, 5, 20])
    assert [(r["n"], r["detected"]) for r in rows] == [(2, 0), (1, 1)]
    assert rows[1]["sensitivity"] == 1.0 and rows[0]["sensitivity"] == 0.0
    # at 0 false positives per case the 0.6 false positive must go, the 0.8 hit stays
    assert per_size_sensitivity(preds, truths, bins=[0, 5, 20], at_fps=0)[0]["score_threshold"] == 0.8
    # in mm: a 2-voxel box with 3 mm voxels is 6 mm
    np.testing.assert_allclose(box_diameters(small, spacing=(3, 3, 3)), [6.0])
    assert per_size_sensitivity(preds, truths, score_threshold=0.9)[0]["detected"] == 0


def test_bootstrap_ci_resamples_cases():
    cases = [(np.array([[0, 0, 4, 4]], float), [0.9], np.array([[0, 0, 4, 4]], float))] * 6 + \
            [(np.zeros((0, 4)), [], np.array([[0, 0, 4, 4]], float))] * 4

    def cpm(chosen):
        return froc([(c[0], c[1]) for c in chosen], [c[2] for c in chosen])["mean_sensitivity"]

    out = bootstrap_ci(cpm, cases, n=300, seed=1)
    assert out["value"] == pytest.approx(0.6)
    assert out["ci_low"] < 0.6 < out["ci_high"] and 0.2 < out["ci_low"] and out["ci_high"] <= 1.0
    assert bootstrap_ci(cpm, cases, n=300, seed=1) == out  # seeded
    both = bootstrap_ci(lambda c: {"cpm": cpm(c), "n": float(len(c))}, cases, n=50)
    assert both["n"]["ci_low"] == both["n"]["ci_high"] == 10


def test_bootstrap_case_cache_changes_nothing():
    from biomx.tasks.stats import percentile_ci

    rng = np.random.default_rng(3)
    cases = []
    for _ in range(8):
        lo = rng.uniform(0, 40, (4, 2))
        true = np.concatenate([lo, lo + 6], axis=1)
        pred = np.concatenate([true[:3] + rng.normal(0, 1, (3, 4)), [[50, 50, 56, 56]]])
        cases.append(((pred, rng.uniform(size=4), np.array([0, 1, 0, 1])), (true, np.array([0, 1, 1, 0]))))

    def metric(chosen):
        f, t = [c[0] for c in chosen], [c[1] for c in chosen]
        return {"map": mean_average_precision(f, t)["map"],
                "cpm": froc([(b, s) for b, s, _ in f], [x for x, _ in t])["mean_sensitivity"]}

    cached = bootstrap_ci(metric, cases, n=40, seed=5)
    draws_rng = np.random.default_rng(5)  # the same resamples, computed without the cache
    draws = [metric([cases[i] for i in draws_rng.integers(0, 8, 8)]) for _ in range(40)]
    for key in ("map", "cpm"):
        expected = percentile_ci(np.array([d[key] for d in draws]), 0.95)
        assert cached[key]["ci_low"] == expected["ci_low"] and cached[key]["ci_high"] == expected["ci_high"]
        assert cached[key]["value"] == metric(cases)[key]
