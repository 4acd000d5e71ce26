"""The segmentation-derived baseline beside the detector (`task.baseline`): components of a mask as
scored boxes, the operating point and agreement counts on hand-made cases, the leak check against
the baseline's split, and end to end: a tiny UNet run on the real nuclei tiles (binary masks)
scored beside a tiny RetinaNet run on the same tiles (instance masks), same split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from biomx.cli import main
from biomx.errors import ConfigError
from biomx.tasks.detection.baseline import (
    agreement,
    baseline_run,
    check_split,
    class_map,
    component_boxes,
    preflight,
    threshold_at,
)
from biomx.tasks.detection.starter import write_nuclei_instances

SPLIT = {"method": "random", "val": 0.125, "test": 0.25, "seed": 0}


def test_components_become_boxes_scored_by_mean_probability():
    probs = np.zeros((2, 8, 10))
    fg = np.zeros((8, 10))
    fg[1:3, 1:4] = 0.9  # a 2 x 3 blob
    fg[5:8, 6:8] = 0.6  # a 3 x 2 blob
    fg[5, 6] = 0.8
    probs[1], probs[0] = fg, 1.0 - fg
    boxes, scores, labels = component_boxes(probs, {1: 0})
    np.testing.assert_array_equal(boxes, [[1, 1, 3, 4], [5, 6, 8, 8]])
    np.testing.assert_allclose(scores, [0.9, (0.6 * 5 + 0.8) / 6])
    np.testing.assert_array_equal(labels, [0, 0])
    none = component_boxes(np.stack([np.ones((4, 4)), np.zeros((4, 4))]), {1: 0})
    assert none[0].shape == (0, 4) and len(none[1]) == 0


def test_class_map_by_name_or_to_the_one_class():
    assert class_map(["background", "tumour", "cyst"], ["lesion"]) == {1: 0, 2: 0}
    assert class_map(["background", "tumour", "cyst"], ["cyst", "tumour"]) == {1: 1, 2: 0}
    with pytest.raises(ConfigError, match="task.baseline"):
        class_map(["background", "a", "b"], ["x", "y"])


def _found(boxes, scores):
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b, np.asarray(scores, dtype=np.float64), np.zeros(len(b), dtype=np.int64)


def test_operating_point_and_agreement():
    truth = [(np.array([[0, 0, 4, 4], [10, 10, 14, 14]], dtype=float), np.zeros(2, dtype=int)),
             (np.array([[20, 20, 24, 24]], dtype=float), np.zeros(1, dtype=int))]  # fmt: skip
    # detector: hits box 0 (0.9), a FP (0.8), hits box 2 (0.7), a FP (0.6), hits box 1 (0.3)
    detector = [_found([[1, 1, 3, 3], [30, 30, 32, 32], [11, 11, 13, 13]], [0.9, 0.8, 0.3]),
                _found([[21, 21, 23, 23], [40, 40, 41, 41]], [0.7, 0.6])]  # fmt: skip
    # at most 1 FP per case over 2 cases: 2 FPs allowed, so everything down to 0.3 is kept
    assert threshold_at(detector, truth, fps=1.0) == pytest.approx(0.3)
    assert threshold_at(detector, truth, fps=0.5) == pytest.approx(0.7)  # one FP: the 0.6 one is out
    baseline = [_found([[0, 0, 4, 4]], [0.95]), _found(np.zeros((0, 4)), [])]
    a = agreement(detector, baseline, truth, fps=0.5)
    assert (a["both"], a["detector_only"], a["baseline_only"], a["neither"]) == (1, 1, 0, 1)
    assert a["n_true"] == 3 and a["agree"] == pytest.approx(2 / 3)
    assert threshold_at([_found([[50, 50, 51, 51]], [0.9])], truth[:1], fps=0.5) == float("inf")


def test_refuses_a_baseline_that_saw_a_test_case(tmp_path):
    (tmp_path / "split.csv").write_text("id,label,split\na,x,train\nb,x,test\nc,x,val\n")
    assert check_split(tmp_path, ["b", "z"]) == "1 of 2 detection test cases are test cases of the baseline run too"
    with pytest.raises(ConfigError, match=r"task.baseline: .*trained or validated on detection test case\(s\) a, c"):
        check_split(tmp_path, ["a", "b", "c"])
    assert "not checked" in check_split(tmp_path / "elsewhere", ["a"])
    with pytest.raises(ConfigError, match="not a run folder"):
        baseline_run(str(tmp_path))
    with pytest.raises(ConfigError, match="not a run folder"):
        preflight(str(tmp_path), ["b"])
    # Gone after training (export, drift and resume rebuild the datasets): a warning, not a refusal.
    assert preflight(str(tmp_path / "removed"), ["b"]) == "missing"


def _write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_detection_run_scores_a_unet_baseline_beside_it(tmp_path):
    scan = {"intensity": "minmax", "crop_foreground": False}
    assert main(["datasets", "--name", "nuclei2d", "--export", str(tmp_path / "semantic")]) == 0
    unet = _write(tmp_path, "unet", {
        "name": "unet", "data": {"modality": "image", "source": "msd", "path": str(tmp_path / "semantic"),
                                 "split": SPLIT, "image": {"scan": scan}},
        "task": {"kind": "segmentation", "patch_size": [64, 64], "patches_per_case": 2, "val_patches_per_case": 1},
        "model": {"name": "unet", "args": {"channels": [8, 16], "strides": [2], "num_res_units": 0}},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0}, "eval": {"bootstrap": 10, "explain": 0},
        "output": {"dir": str(tmp_path / "seg")}})  # fmt: skip
    assert main(["train", str(unet)]) == 0
    seg_run = next((tmp_path / "seg").iterdir())
    instances = write_nuclei_instances(tmp_path / "instances").parent
    det = _write(tmp_path, "det", {
        "name": "det", "data": {"modality": "image", "source": "msd", "path": str(instances), "split": SPLIT,
                                "image": {"scan": scan}},
        "task": {"kind": "detection", "boxes_from": "instances", "patch_size": [64, 64], "patches_per_case": 2,
                 "val_patches_per_case": 1, "score_threshold": 0.0, "detections_per_image": 20,
                 "baseline": str(seg_run)},
        "model": {"name": "retinanet", "args": {"depth": 10, "width": 8, "fpn_channels": 16,
                                                "returned_layers": [1, 2]}},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "monitor": "val_ap50"},
        "eval": {"bootstrap": 10, "explain": 0}, "output": {"dir": str(tmp_path / "det_runs")}})  # fmt: skip
    assert main(["train", str(det)]) == 0
    run = next((tmp_path / "det_runs").iterdir())
    metrics = json.loads((run / "test_metrics.json").read_text())
    base = metrics["baseline"]
    assert base["run"] == str(seg_run) and base["split_check"].startswith("4 of 4")
    assert set(base["metrics"]) == set(metrics["metrics"])
    for m in base["metrics"].values():
        assert np.isnan(m["value"]) or 0.0 <= m["value"] <= 1.0
    a = base["agreement"]
    assert a["both"] + a["detector_only"] + a["baseline_only"] + a["neither"] == a["n_true"] == metrics["n_true"]
    assert "Detector vs segmentation baseline" in (run / "report.html").read_text()


def _unet_3d(tmp_path: Path, data: dict, name: str) -> Path:
    """A tiny 3D UNet run (1 epoch) on the lesion masks; returns its run folder."""
    cfg = _write(tmp_path, name, {
        "name": name, "data": data,
        "task": {"kind": "segmentation", "patch_size": [32, 32, 16], "patches_per_case": 2,
                 "val_patches_per_case": 1, "sw_batch_size": 2},
        "model": {"name": "unet", "args": {"channels": [8, 16], "strides": [2], "num_res_units": 0}},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0}, "eval": {"bootstrap": 10, "explain": 0},
        "output": {"dir": str(tmp_path / name)}})  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    return next((tmp_path / name).iterdir())


def _split(run: Path) -> dict[str, str]:
    with open(run / "split.csv", newline="") as f:
        return {row["id"]: row["split"] for row in csv.DictReader(f)}


def test_3d_detection_run_scores_a_unet_baseline_and_refuses_a_leaky_one(tmp_path, capsys):
    """The 3D path end to end: synthetic lesion volumes (boxes from MONAI's JSON, one per lesion),
    a tiny 3D UNet on their masks as the baseline of a tiny RetinaNet run on the same split; a UNet
    trained on another split (so on a detection test case) is refused before any training."""
    from biomx.tasks.detection.lesion_boxes import write_lesion_detection_dataset

    folder = write_lesion_detection_dataset(tmp_path / "lesions", n_cases=8, seed=1, shape=(32, 32, 16))["json"].parent
    volume = {"intensity": "ct", "ct_window": [-100, 150], "crop_foreground": False,
              "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    split = {"method": "random", "val": 0.25, "test": 0.25, "seed": 0}
    data = {"modality": "volume", "source": "msd", "path": str(folder), "split": split, "volume": volume}
    seg_run = _unet_3d(tmp_path, data, "seg")
    leaky_run = _unet_3d(tmp_path, {**data, "split": {**split, "seed": 1}}, "leaky")

    def detection(name: str, baseline: Path) -> Path:
        return _write(tmp_path, name, {
            "name": name, "data": data,
            "task": {"kind": "detection", "boxes": "boxes.json", "patch_size": [32, 32, 16], "patches_per_case": 2,
                     "val_patches_per_case": 1, "sw_batch_size": 2, "score_threshold": 0.0,
                     "detections_per_image": 10, "baseline": str(baseline)},
            "model": {"name": "retinanet", "args": {"depth": 10, "width": 8, "fpn_channels": 16,
                                                    "returned_layers": [1, 2]}},
            "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "monitor": "val_ap50"},
            "eval": {"bootstrap": 10, "explain": 1}, "output": {"dir": str(tmp_path / name)}})  # fmt: skip

    assert main(["train", str(detection("det", seg_run))]) == 0
    run = next((tmp_path / "det").iterdir())
    assert _split(run) == _split(seg_run)
    metrics = json.loads((run / "test_metrics.json").read_text())
    base, n_true = metrics["baseline"], metrics["n_true"]
    assert metrics["n"] == 2 and n_true >= 2 and base["split_check"].startswith("2 of 2")
    assert base["run"] == str(seg_run) and set(base["metrics"]) == set(metrics["metrics"])
    for m in base["metrics"].values():
        assert np.isnan(m["value"]) or 0.0 <= m["value"] <= 1.0
    a = base["agreement"]
    assert a["both"] + a["detector_only"] + a["baseline_only"] + a["neither"] == a["n_true"] == n_true
    # each side's found boxes are its sensitivity at 1 false positive per case (the same operating point)
    assert (a["both"] + a["detector_only"]) / n_true == pytest.approx(metrics["metrics"]["sensitivity_at_1_fp"]["value"])
    assert (a["both"] + a["baseline_only"]) / n_true == pytest.approx(base["metrics"]["sensitivity_at_1_fp"]["value"])
    assert a["agree"] == pytest.approx((a["both"] + a["neither"]) / n_true)
    # the paired difference: detector minus baseline on the same cases, an interval from the same resamples
    assert set(base["difference"]) == set(metrics["metrics"])
    for name, d in base["difference"].items():
        own, other = metrics["metrics"][name]["value"], base["metrics"][name]["value"]
        assert d["value"] == pytest.approx(own - other, nan_ok=True) and d["n_boot"] == 10
    assert "difference CI" in (run / "report.html").read_text()
    assert "Detector vs segmentation baseline" in (run / "report.html").read_text()

    leaked = sorted(i for i, s in _split(run).items() if s == "test" and _split(leaky_run)[i] != "test")
    assert leaked  # split seed 1 trains or validates on some of seed 0's test cases
    capsys.readouterr()
    assert main(["train", str(detection("det_leaky", leaky_run))]) != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "task.baseline" in err and f"detection test case(s) {', '.join(leaked)}" in err
    assert not list((tmp_path / "det_leaky").glob("*/checkpoints/*"))  # refused before any training
