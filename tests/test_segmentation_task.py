"""Segmentation task: MONAI losses, quick Dice, per-case surface metrics and the bootstrap summary."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from biomx.errors import ConfigError, DataError
from biomx.tasks import quick_metric_names, task_from_info
from biomx.tasks.segmentation.task import (
    SEGMENTATION_QUICK_METRICS,
    SegmentationTask,
    build_segmentation_task,
    case_metrics,
    remove_small_components,
)

CLASSES = ["background", "lesion"]


def _blob_labels(shape: tuple[int, ...], seed: int, k: int = 3) -> torch.Tensor:
    """Smooth random label maps (N, *S) with every class present."""
    noise = gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma=[0] + [1.5] * (len(shape) - 1))
    edges = np.quantile(noise, np.linspace(0, 1, k + 1)[1:-1])
    return torch.as_tensor(np.digitize(noise, edges), dtype=torch.int64)


# Loss


@pytest.mark.parametrize("loss", ["dice", "dice_ce", "focal"])
@pytest.mark.parametrize("spatial", [(12, 12), (6, 8, 8)])
def test_loss_gradients_flow_and_loss_decreases(loss, spatial):
    torch.manual_seed(0)
    task = build_segmentation_task(["bg", "a", "b"], loss)
    targets = _blob_labels((2, *spatial), seed=1)
    logits = torch.zeros((2, 3, *spatial), requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    first = task.loss(logits, targets)
    assert first.ndim == 0
    first.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    for _ in range(20):
        opt.zero_grad()
        task.loss(logits, targets).backward()
        opt.step()
    assert task.loss(logits, targets).item() < 0.5 * first.item()


@pytest.mark.parametrize("loss", ["dice", "dice_ce", "focal"])
def test_loss_of_perfect_prediction_is_near_zero(loss):
    task = build_segmentation_task(["bg", "a", "b"], loss)
    targets = _blob_labels((2, 5, 6, 7), seed=2)
    logits = 30.0 * torch.nn.functional.one_hot(targets, 3).movedim(-1, 1).float()
    assert task.loss(logits, targets).item() < 1e-3
    wrong = 30.0 * torch.nn.functional.one_hot((targets + 1) % 3, 3).movedim(-1, 1).float()
    assert task.loss(wrong, targets).item() > 0.5


def test_loss_rejects_mismatched_shapes():
    task = build_segmentation_task(CLASSES)
    with pytest.raises(DataError, match="out_dim"):
        task.loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.int64))
    with pytest.raises(DataError):
        task.loss(torch.zeros(2, 2, 8, 8), torch.zeros(2, 8, 7, dtype=torch.int64))


def test_predictions_and_labels():
    task = build_segmentation_task(["bg", "a", "b"])
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    probs = task.predictions(logits)
    assert probs.dtype == torch.float32 and probs.shape == logits.shape
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 4, 5))
    labels = task.predict_labels(probs.numpy())
    assert labels.dtype == np.uint8 and labels.shape == (2, 4, 5)
    assert np.array_equal(labels, logits.argmax(dim=1).numpy())


# Quick metrics


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.moveaxis(np.eye(k, dtype=np.float32)[labels], -1, 1)


def test_quick_dice_pools_voxels_and_skips_absent_classes():
    task = build_segmentation_task(["bg", "a", "b"])
    truth = np.zeros((2, 4, 4), np.int64)
    pred = np.zeros((2, 4, 4), np.int64)
    truth[0, 0, :4] = 1      # class a: 4 true voxels in case 0
    pred[0, 0, :2] = 1       # 2 of them found
    pred[1, 3, 3] = 1        # and 1 false positive in case 1: dice 2*2 / (3 + 4)
    # class b absent from both: left out
    assert task.quick_metrics(_one_hot(pred, 3), truth)["dice"] == pytest.approx(4 / 7)
    truth[1, 2, :2] = 2      # class b: 2 true voxels, 2 predicted, 1 overlap: 0.5
    pred[1, 2, 1:3] = 2
    assert task.quick_metrics(_one_hot(pred, 3), truth)["dice"] == pytest.approx((4 / 7 + 0.5) / 2)


def test_quick_dice_undefined_cases_are_nan_not_errors():
    task = build_segmentation_task(CLASSES)
    empty = np.zeros((1, 3, 3), np.int64)
    assert math.isnan(task.quick_metrics(_one_hot(empty, 2), empty)["dice"])
    probs = _one_hot(empty, 2)
    probs[0, 0, 0, 0] = np.nan
    assert math.isnan(task.quick_metrics(probs, empty)["dice"])
    assert set(task.quick_metrics(_one_hot(empty, 2), empty)) == set(SEGMENTATION_QUICK_METRICS)
    with pytest.raises(DataError):
        task.quick_metrics(_one_hot(empty, 2), np.zeros((1, 3, 4), np.int64))


# Per-case metrics on hand-computable geometry


def test_case_metrics_shifted_squares_anisotropic():
    """Two 10x10 squares offset by 2 rows; rows are 3 mm apart, columns 0.5 mm.

    Each surface has 36 pixels. From the shifted square's surface to the other's: its far
    edge (10 px) is 6 mm away, the two pixels just past the other's corners 3 mm, its near
    edge 0, 0.5, 1, 1.5, 2, 2, 1.5, 1, 0.5, 0 mm (to the side walls), the rest 0; the same
    back by symmetry. So HD95 = 6 mm (the offset); within 1 mm: 20 of 36 per side; within
    3 mm: 26 of 36.
    """
    truth = np.zeros((40, 40), np.int64)
    pred = np.zeros((40, 40), np.int64)
    truth[10:20, 10:20] = 1
    pred[12:22, 10:20] = 1
    spacing = (3.0, 0.5)
    r = case_metrics(pred, truth, spacing, CLASSES, tolerance_mm=1.0, case_id="sq")
    assert r["id"] == "sq" and r["surface_tolerance_mm"] == 1.0
    assert r["dice"]["lesion"] == pytest.approx(2 * 80 / 200)
    assert r["hd95"]["lesion"] == pytest.approx(6.0)
    assert r["surface_dice"]["lesion"] == pytest.approx(40 / 72)
    assert r["volume_true"]["lesion"] == pytest.approx(100 * 1.5)
    assert r["volume_pred"]["lesion"] == pytest.approx(100 * 1.5)
    assert case_metrics(pred, truth, spacing, CLASSES, 3.0)["surface_dice"]["lesion"] == pytest.approx(52 / 72)
    assert case_metrics(pred, truth, spacing, CLASSES, 6.0)["surface_dice"]["lesion"] == pytest.approx(1.0)
    # The same shift along the 0.5 mm axis is a 1 mm HD95.
    assert case_metrics(pred.T, truth.T, spacing, CLASSES)["hd95"]["lesion"] == pytest.approx(1.0)


def test_case_metrics_shifted_cubes_3d():
    """6^3 cubes offset by one 2.5 mm slice: 152 surface voxels each; 36 (the far face) are
    2.5 mm away, the near face's 16 inner voxels 1 mm (12) or 2 mm (4) from the side walls."""
    truth = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros((20, 20, 20), np.uint8)
    truth[5:11, 5:11, 5:11] = 1
    pred[6:12, 5:11, 5:11] = 1
    spacing = (2.5, 1.0, 1.0)
    r = case_metrics(pred, truth, spacing, CLASSES, tolerance_mm=1.0)
    assert r["dice"]["lesion"] == pytest.approx(5 / 6)
    assert r["hd95"]["lesion"] == pytest.approx(2.5)
    assert r["surface_dice"]["lesion"] == pytest.approx(112 / 152)
    assert case_metrics(pred, truth, spacing, CLASSES, 2.0)["surface_dice"]["lesion"] == pytest.approx(116 / 152)
    assert r["volume_true"]["lesion"] == pytest.approx(216 * 2.5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI-internal deprecation notice
def test_case_metrics_match_monai_on_random_shapes():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(3)
    spacing = (1.5, 0.7, 2.5)
    for _ in range(2):
        truth = (gaussian_filter(rng.normal(size=(24, 30, 20)), 2.5) > 0.05).astype(np.int64)
        pred = (gaussian_filter(rng.normal(size=(24, 30, 20)), 2.5) > 0.05).astype(np.int64)
        ours = case_metrics(pred, truth, spacing, CLASSES, tolerance_mm=2.0)
        y_pred = torch.as_tensor(np.stack([1 - pred, pred])[None]).float()
        y = torch.as_tensor(np.stack([1 - truth, truth])[None]).float()
        hd = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=spacing)
        nsd = compute_surface_dice(y_pred, y, [2.0], include_background=False, spacing=spacing)
        assert ours["hd95"]["lesion"] == pytest.approx(float(hd), rel=1e-5)
        assert ours["surface_dice"]["lesion"] == pytest.approx(float(nsd), rel=1e-5)


def test_case_metrics_empty_conventions():
    classes = ["bg", "a", "b", "c"]
    truth = np.zeros((10, 10), np.int64)
    pred = np.zeros((10, 10), np.int64)
    truth[2:4, 2:4] = 1                 # a: missed entirely
    pred[6:8, 6:8] = 2                  # b: predicted, absent in truth
    r = case_metrics(pred, truth, (1.0, 1.0), classes)  # c: absent from both
    assert r["dice"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert r["surface_dice"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    assert math.isnan(r["hd95"]["a"]) and math.isnan(r["hd95"]["b"]) and r["hd95"]["c"] == 0.0
    assert r["volume_pred"] == {"a": 0.0, "b": 4.0, "c": 0.0}


def test_case_metrics_object_touching_the_border():
    truth = np.zeros((8, 8), np.int64)
    truth[0:4, 0:8] = 1
    r = case_metrics(truth, truth, (1.0, 1.0), CLASSES)
    assert r["dice"]["lesion"] == 1.0 and r["hd95"]["lesion"] == 0.0 and r["surface_dice"]["lesion"] == 1.0


def test_case_metrics_bad_input():
    a = np.zeros((5, 5), np.int64)
    with pytest.raises(DataError, match="'c1'"):
        case_metrics(a, np.zeros((5, 6), np.int64), (1, 1), CLASSES, case_id="c1")
    with pytest.raises(DataError, match="spacing"):
        case_metrics(a, a, (1, 1, 1), CLASSES)
    with pytest.raises(DataError, match="spacing"):
        case_metrics(a, a, (1, 0), CLASSES)
    bad = a.copy()
    bad[0, 0] = 2
    with pytest.raises(DataError, match="outside 0..1"):
        case_metrics(a, bad, (1, 1), CLASSES, case_id="c2")


def test_case_metrics_small_lesion_in_large_volume_is_fast():
    truth = np.zeros((128, 256, 256), np.uint8)
    pred = np.zeros_like(truth)
    truth[60:70, 100:112, 100:115] = 1
    pred[61:71, 100:112, 100:115] = 1
    start = time.perf_counter()
    r = case_metrics(pred, truth, (2.0, 0.8, 0.8), CLASSES)
    assert time.perf_counter() - start < 1.0
    assert r["dice"]["lesion"] == pytest.approx(0.9) and r["hd95"]["lesion"] == pytest.approx(2.0)


# Evaluation over cases


def _cases(n: int, seed: int = 0, tolerance: float = 1.0) -> list[dict]:
    """Squares with random offsets for class a; class b is missed in every third case."""
    rng = np.random.default_rng(seed)
    classes = ["bg", "a", "b"]
    cases = []
    for i in range(n):
        truth = np.zeros((24, 24), np.int64)
        pred = np.zeros((24, 24), np.int64)
        truth[4:12, 4:12] = 1
        dy, dx = rng.integers(0, 4, size=2)
        pred[4 + dy:12 + dy, 4 + dx:12 + dx] = 1
        truth[16:20, 16:20] = 2
        if i % 3:
            pred[16:20, 17:21] = 2
        cases.append(case_metrics(pred, truth, (1.0, 2.0), classes, tolerance, f"case{i}"))
    return cases


def test_evaluate_summary_and_cis():
    task = build_segmentation_task(["bg", "a", "b"])
    cases = _cases(12)
    ev = task.evaluate(cases, n_bootstrap=300, ci=0.9, seed=5)
    json.dumps(ev)  # JSON-serialisable
    assert ev["kind"] == "segmentation" and ev["n"] == 12 and ev["classes"] == ["bg", "a", "b"]
    assert ev["ci"] == 0.9 and ev["n_bootstrap"] == 300 and ev["surface_tolerance_mm"] == 1.0
    assert set(ev["per_class"]) == {"a", "b"}
    keys = {f"{m}{s}" for m in ("dice", "hd95", "surface_dice") for s in ("", "_ci_low", "_ci_high")}
    assert set(ev["per_class"]["a"]) == keys | {"hd95_undefined"}
    assert ev["per_class"]["b"]["hd95_undefined"] == 4 and ev["per_class"]["a"]["hd95_undefined"] == 0
    dice_a = np.mean([c["dice"]["a"] for c in cases])
    assert ev["per_class"]["a"]["dice"] == pytest.approx(dice_a)
    hd_b = np.nanmean([c["hd95"]["b"] for c in cases])  # over the 8 cases where it is defined
    assert ev["per_class"]["b"]["hd95"] == pytest.approx(hd_b)
    for m in ("dice", "hd95", "surface_dice"):
        entry = ev["metrics"][m]
        assert entry["value"] == pytest.approx(np.mean([ev["per_class"][c][m] for c in ("a", "b")]))
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
        assert entry["ci_low"] < entry["ci_high"]
        for c in ("a", "b"):
            s = ev["per_class"][c]
            assert s[f"{m}_ci_low"] <= s[m] <= s[f"{m}_ci_high"]


def test_evaluate_bootstrap_is_seeded():
    task = build_segmentation_task(["bg", "a", "b"])
    cases = _cases(10)
    first = task.evaluate(cases, n_bootstrap=200, seed=1)
    assert json.dumps(first) == json.dumps(task.evaluate(cases, n_bootstrap=200, seed=1))
    other = task.evaluate(cases, n_bootstrap=200, seed=2)
    assert other["metrics"]["dice"]["value"] == first["metrics"]["dice"]["value"]
    assert other["metrics"]["dice"]["ci_low"] != first["metrics"]["dice"]["ci_low"]


def test_evaluate_edge_cases():
    task = build_segmentation_task(["bg", "a", "b"])
    empty = task.evaluate([], n_bootstrap=50)
    assert empty["n"] == 0 and set(empty["per_class"]) == {"a", "b"}
    assert all(math.isnan(v) for m in empty["metrics"].values() for v in m.values())
    no_boot = task.evaluate(_cases(3), n_bootstrap=0)
    assert not math.isnan(no_boot["metrics"]["dice"]["value"])
    assert math.isnan(no_boot["metrics"]["dice"]["ci_low"]) and math.isnan(no_boot["metrics"]["dice"]["ci_high"])
    for bad in ({"n_bootstrap": -1}, {"ci": 1.0}, {"ci": 0.0}, {"n_bootstrap": 1.5}):
        with pytest.raises(ConfigError):
            task.evaluate(_cases(2), **bad)
    with pytest.raises(DataError, match="tolerances"):
        task.evaluate(_cases(2) + _cases(2, tolerance=2.0))
    with pytest.raises(DataError, match="case0"):
        build_segmentation_task(["bg", "a", "z"]).evaluate(_cases(2))


def test_case_table_columns():
    task = build_segmentation_task(["bg", "a", "b"])
    cases = _cases(3)
    table = task.case_table(cases)
    assert list(table)[:3] == ["id", "dice_a", "dice_b"]
    assert {"hd95_a", "surface_dice_b", "volume_true_a", "volume_pred_b"} <= set(table)
    assert table["id"] == ["case0", "case1", "case2"]
    assert all(len(col) == 3 for col in table.values())
    assert float(table["dice_a"][0]) == pytest.approx(cases[0]["dice"]["a"], rel=1e-5)
    assert table["hd95_b"][0] == "nan"  # case0 misses class b
    assert all(len(v.replace(".", "").lstrip("0")) <= 6 for v in table["dice_a"])


# Post-processing


def test_remove_small_components_by_physical_size_per_class():
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1:4, 1:4, 1:4] = 1     # 27 voxels x 2 mm^3 = 54 mm^3: kept
    mask[8, 8, 8] = 1           # 2 mm^3 speckle: removed
    mask[4, 4, 4] = 1           # touches the cube only at a corner: part of it (26-connected)
    mask[8:10, 1:3, 1:3] = 2    # class 2, 8 voxels = 16 mm^3: removed at 20, kept at 10
    before = mask.copy()
    out = remove_small_components(mask, (1.0, 1.0, 2.0), 20.0)
    assert np.array_equal(mask, before)  # the input is not modified
    assert out[8, 8, 8] == 0 and out[4, 4, 4] == 1 and (out[1:4, 1:4, 1:4] == 1).all()
    assert not (out == 2).any() and (out == 1).sum() == 28
    kept = remove_small_components(mask, (1.0, 1.0, 2.0), 10.0)
    assert (kept == 2).sum() == 8 and kept[8, 8, 8] == 0
    assert remove_small_components(mask, (1.0, 1.0, 2.0), 0.0) is mask
    # at 0.5 mm the cube is 3.5 mm^3: gone at 4, kept at 3
    assert not (remove_small_components(mask, (0.5, 0.5, 0.5), 4.0) == 1).any()
    assert (remove_small_components(mask, (0.5, 0.5, 0.5), 3.0) == 1).sum() == 28


def test_postprocess_removes_speckles_and_lowers_hd95():
    truth = np.zeros((40, 40, 20), np.uint8)
    truth[10:20, 10:20, 5:12] = 1
    pred = truth.copy()
    pred[33:36, 33:36, 15:18] = 1  # a false-positive blob far away: 27 mm^3, ~8% of the surface
    task = build_segmentation_task(CLASSES, None, min_component_size=30.0)
    raw = case_metrics(pred, truth, (1.0, 1.0, 1.0), CLASSES)
    cleaned = case_metrics(task.postprocess(pred, (1.0, 1.0, 1.0)), truth, (1.0, 1.0, 1.0), CLASSES)
    assert raw["hd95"]["lesion"] > 0 and cleaned["hd95"]["lesion"] == 0 and cleaned["dice"]["lesion"] == 1


# Construction and saved-run round trip


def test_task_from_info_round_trip_and_quick_metric_names():
    task = build_segmentation_task(["bg", "liver", "tumour"], "focal")
    assert task.kind == "segmentation" and task.out_dim == 3 and task.threshold is None
    info = {"kind": task.kind, "classes": task.classes, "loss": task.loss_name}
    rebuilt = task_from_info(json.loads(json.dumps(info)))
    assert isinstance(rebuilt, SegmentationTask)
    assert rebuilt.classes == task.classes and rebuilt.loss_name == "focal"
    assert task_from_info({"kind": "segmentation", "classes": CLASSES, "loss": None}).loss_name == "dice_ce"
    assert rebuilt.min_component_size == 0.0  # runs saved before the setting existed
    info["min_component_size"] = 30.0
    assert task_from_info(info).min_component_size == 30.0
    assert quick_metric_names("segmentation") == ("dice",)


@pytest.mark.parametrize("classes, loss", [(["bg"], None), (["bg", "bg"], None), ([], None),
                                           ("bg,fg", None), (["bg", ""], None), (CLASSES, "mse")])
def test_build_errors_are_config_errors(classes, loss):
    with pytest.raises(ConfigError, match="task\\."):
        build_segmentation_task(classes, loss)
    with pytest.raises(ConfigError, match="task.min_component_size"):
        build_segmentation_task(CLASSES, None, -1.0)


def test_config_checks_shared_with_detection_keep_segmentation_words():
    """tasks/spatial.py's checks, as segmentation words them."""
    from biomx.config import validate
    from biomx.modalities import get_modality
    from biomx.tasks.segmentation import check_config

    tabular = validate({"data": {"modality": "tabular", "source": "csv", "path": "rows.csv", "label_column": "y"},
                        "task": {"kind": "segmentation"}})  # fmt: skip
    with pytest.raises(ConfigError, match="^task.kind: segmentation needs images or volumes; data.modality "
                                          "'tabular' has no pixels to label$"):  # fmt: skip
        check_config(tabular, get_modality("tabular"))
    folder = validate({"data": {"modality": "image", "source": "folder", "path": "xrays", "image": {"size": [32, 32]}},
                       "task": {"kind": "segmentation"}})  # fmt: skip
    with pytest.raises(ConfigError, match="^task.kind: segmentation reads image/mask pairs from data.source: msd; "
                                          "'folder' has no masks$"):  # fmt: skip
        check_config(folder, get_modality("image"))
