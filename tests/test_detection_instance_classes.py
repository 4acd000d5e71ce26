"""A class per box from an instance mask with nnDetection's JSON beside it
(labelsTr/<case>.json: {"instances": {"1": 0, "2": 1}}): the dataset's boxes, the test truth and
a one-epoch run carry the classes; every bad JSON is one line naming the file and the id; without
a JSON every box is class 0, as before."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from biomx.cli import main
from biomx.config import validate
from biomx.errors import DataError
from biomx.modalities import get_modality
from biomx.tasks.detection.data import load, mask_boxes
from biomx.tasks.detection.instance_classes import class_file

TINY = {"depth": 10, "width": 8, "fpn_channels": 16, "returned_layers": [1, 2]}
# per case: (instance id, top-left corner, side, class): a small bright square is class 0 ("dot"),
# a larger dimmer one class 1 ("blob")
OBJECTS = [(1, (6, 8), 6, 0), (2, (30, 34), 12, 1), (3, (44, 10), 6, 0)]


def _dataset(root: Path, n_cases: int = 8, classes: bool = True) -> Path:
    """An MSD folder of 64x64 TIFF images with instance masks (ids 1..3) and, with `classes`, the
    class JSON beside each mask; returns the folder."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for k in range(n_cases):
        image = rng.normal(100, 5, (64, 64)).astype(np.float32)
        mask = np.zeros((64, 64), dtype=np.uint8)
        for instance, (r, c), side, cls in OBJECTS:
            r, c = (r + 3 * k) % 48, (c + 5 * k) % 48  # moved a little per case
            image[r:r + side, c:c + side] += 200 if cls == 0 else 80
            mask[r:r + side, c:c + side] = instance
        name = f"case_{k:03d}"
        tifffile.imwrite(root / "imagesTr" / f"{name}.tif", image)
        tifffile.imwrite(root / "labelsTr" / f"{name}.tif", mask)
        if classes:
            (root / "labelsTr" / f"{name}.json").write_text(json.dumps({"instances": {str(i): c for i, _, _, c in OBJECTS}}))
        training.append({"image": f"./imagesTr/{name}.tif", "label": f"./labelsTr/{name}.tif"})
    info = {"name": "tiny", "tensorImageSize": "2D", "modality": {"0": "light"},
            "labels": {"0": "background", "1": "dot", "2": "blob"}, "numTraining": n_cases, "training": training}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def _data(root: Path, cache: Path) -> dict:
    return {"modality": "image", "source": "msd", "path": str(root),
            "split": {"method": "random", "val": 0.25, "test": 0.25, "seed": 0},
            "image": {"scan": {"intensity": "minmax", "crop_foreground": False, "cache_dir": str(cache)}}}  # fmt: skip


def _load(root: Path, cache: Path, **task):
    cfg = validate({"data": _data(root, cache), "model": {"name": "retinanet", "args": TINY},
                    "task": {"kind": "detection", "patch_size": [32, 32], "boxes_from": "instances", **task}})  # fmt: skip
    return load(cfg, get_modality("image"))


def test_class_file_sits_beside_the_mask():
    assert class_file("labelsTr/case_001.nii.gz") == Path("labelsTr/case_001.json")
    assert class_file("labelsTr/case_001.tif") == Path("labelsTr/case_001.json")
    assert class_file("/d/labelsTr/case.v2.nii") == Path("/d/labelsTr/case.v2.json")


def test_boxes_take_their_class_from_the_json(tmp_path):
    root = _dataset(tmp_path / "d")
    inputs = _load(root, tmp_path / "cache").inputs
    assert len(inputs.cases) == 8
    for boxes, labels in zip(inputs.boxes, inputs.labels, strict=True):
        sides = (boxes[:, 2] - boxes[:, 0]).tolist()
        assert sorted(zip(sides, labels.tolist(), strict=True)) == [(6.0, 0), (6.0, 0), (12.0, 1)]
    # auto with the JSON reads instances too (the mask's 3 ids would otherwise be 3 classes' components)
    auto = _load(root, tmp_path / "cache", boxes_from="auto", classes=["dot", "blob", "third"]).inputs
    assert [sorted(lab.tolist()) for lab in auto.labels] == [[0, 0, 1]] * 8
    # an instance cropped away (in the JSON, not in the mask) is fine; the JSON is read afresh, not cached
    path = root / "labelsTr" / "case_000.json"
    path.write_text(json.dumps({"instances": {"1": 1, "2": 0, "3": 1, "9": 0}}))
    again = _load(root, tmp_path / "cache").inputs
    assert sorted(again.labels[0].tolist()) == [0, 1, 1]


def test_without_a_json_every_box_is_class_0(tmp_path):
    root = _dataset(tmp_path / "d", classes=False)
    inputs = _load(root, tmp_path / "cache").inputs
    assert all(len(lab) == 3 and not lab.any() for lab in inputs.labels)
    mask = tifffile.imread(root / "labelsTr" / "case_000.tif")
    assert mask_boxes(mask, "instances", 2, root / "labelsTr" / "case_000.tif")[1].tolist() == [0, 0, 0]


@pytest.mark.parametrize("content, expected", [
    ("{not json", "not readable as JSON"),
    ('{"classes": {"1": 0}}', 'no "instances" mapping'),
    ('[1, 2]', 'no "instances" mapping'),
    ('{"instances": {"1": 0, "2": 1}}', 'instance 3 is in the mask but not in "instances"'),
    ('{"instances": {"1": 0, "2": 2, "3": 0}}', "instance 2: class 2 is outside task.classes (0..1"),
    ('{"instances": {"1": 0, "2": -1, "3": 0}}', "instance 2: class -1 is outside"),
    ('{"instances": {"1": 0, "2": "1", "3": 0}}', "instance 2: class '1' is outside"),
    ('{"instances": {"1": 0, "x": 1, "3": 0}}', "instance 'x': ids are positive integers"),
])  # fmt: skip
def test_a_bad_json_is_one_line_naming_file_and_id(tmp_path, content, expected):
    root = _dataset(tmp_path / "d", n_cases=2)
    bad = root / "labelsTr" / "case_001.json"
    bad.write_text(content)
    with pytest.raises(DataError) as err:
        _load(root, tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{bad}: ") and expected in message, message
    # the test truth is read with the same checks (the mask as read from its file)
    with pytest.raises(DataError, match="case_001.json"):
        mask_boxes(tifffile.imread(root / "labelsTr" / "case_001.tif"), "instances", 2, root / "labelsTr" / "case_001.tif")


def test_a_bad_json_skipped_with_on_error_skip(tmp_path):
    root = _dataset(tmp_path / "d", n_cases=3)
    (root / "labelsTr" / "case_002.json").write_text('{"instances": {"1": 0}}')
    cfg = validate({"data": {**_data(root, tmp_path / "cache"), "on_error": "skip"},
                    "model": {"name": "retinanet", "args": TINY},
                    "task": {"kind": "detection", "patch_size": [32, 32], "boxes_from": "instances"}})  # fmt: skip
    samples = load(cfg, get_modality("image"))
    assert samples.ids == ["case_000", "case_001"]
    assert len(samples.skipped) == 1 and "case_002.json: instance 2 (and 1 more)" in samples.skipped[0][1]


def test_one_epoch_run_with_two_classes(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    cfg = {"name": "two", "data": _data(root, tmp_path / "cache"), "model": {"name": "retinanet", "args": TINY},
           "task": {"kind": "detection", "patch_size": [32, 32], "boxes_from": "instances", "patches_per_case": 2,
                    "val_patches_per_case": 1, "score_threshold": 0.0, "detections_per_image": 10},
           "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "monitor": "val_ap50"},
           "eval": {"bootstrap": 10, "explain": 1}, "output": {"dir": str(tmp_path / "runs")}}  # fmt: skip
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["classes"] == ["dot", "blob"] and metrics["n"] == 2 and metrics["n_true"] == 6
    # the test truth carries both classes (read from the masks' JSONs): each class has an AP
    for name in ("ap_50_dot", "ap_50_blob"):
        assert 0.0 <= metrics["metrics"][name]["value"] <= 1.0
    assert json.loads((run / "run.json").read_text())["model"]["args"]["out_dim"] == 2
    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["class"] for r in rows} <= {"dot", "blob"}
    # a bad JSON stops the run before training, in one line
    (root / "labelsTr" / "case_004.json").write_text('{"instances": {"1": 0, "2": 5, "3": 0}}')
    capsys.readouterr()
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "case_004.json: instance 2: class 5" in err[0], err


def test_per_class_ap_with_two_classes():
    from biomx.tasks.detection.scoring import evaluate_detections

    box = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    truth = [(box, np.array([0, 1]))]
    found = [(box[1:], np.array([0.9]), np.array([1]))]  # the "blob" found, the "dot" missed
    metrics = evaluate_detections(found, truth, classes=["dot", "blob"], n_bootstrap=5)["metrics"]
    assert metrics["ap_50_dot"]["value"] == 0.0 and metrics["ap_50_blob"]["value"] == 1.0
    assert metrics["map_50"]["value"] == 0.5
    assert "ap_50_object" not in evaluate_detections(found, truth, classes=["object"], n_bootstrap=5)["metrics"]
