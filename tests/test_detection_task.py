"""The detection task end to end: RetinaNet trained through `biomx train` on the real nuclei tiles
(boxes from the hand-drawn instance mask) and on small synthetic CT volumes (boxes from lesion
components), evaluated and predicted; its pieces (anchors from boxes, patch targets, boxes back on
the scan's grid, the scores); bad config lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from biomx.cli import main
from biomx.config import validate
from biomx.data.cases import preprocess
from biomx.errors import ConfigError
from biomx.modalities import get_modality
from biomx.models.detection import retinanet
from biomx.tasks.detection import check_config
from biomx.tasks.detection.data import BoxPatches, derive_anchor_shapes, mask_boxes
from biomx.tasks.detection.inference import to_scan_voxels
from biomx.tasks.detection.scoring import evaluate_detections, match
from biomx.tasks.detection.starter import write_nuclei_instances
from biomx.tasks.detection.task import build_detection_task

TINY = {"depth": 10, "width": 8, "fpn_channels": 16, "returned_layers": [1, 2]}


def _config(tmp_path: Path, data: dict, task: dict, name: str) -> Path:
    cfg = {"name": name, "data": data, "model": {"name": "retinanet", "args": TINY},
           "task": {"kind": "detection", **task},
           "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "monitor": "val_ap50"},
           "eval": {"bootstrap": 20, "explain": 2}, "output": {"dir": str(tmp_path / "runs")}}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    return write_nuclei_instances(tmp_path_factory.mktemp("nuclei"), tile=128).parent


def test_nuclei_tiles_hold_every_nucleus(nuclei):
    info = json.loads((nuclei / "dataset.json").read_text())
    assert info["numTraining"] == 16 and info["labels"]["1"] == "nucleus"
    import tifffile

    ids = set()
    for case in info["training"]:
        ids |= set(np.unique(tifffile.imread(nuclei / case["label"]))) - {0}
    assert len(ids) == 125  # every hand-drawn nucleus is in some tile


def test_trains_evaluates_and_predicts_nuclei(tmp_path, nuclei, capsys):
    scan = {"intensity": "minmax", "crop_foreground": False, "cache_dir": str(tmp_path / "cache"),
            "augment": {"flip": 0.5, "rotate90": 0.5, "rotate": 15.0, "scale": [0.9, 1.1]}}
    cfg = _config(tmp_path, {"modality": "image", "source": "msd", "path": str(nuclei),
                             "split": {"method": "random", "val": 0.125, "test": 0.25, "seed": 0},
                             "image": {"scan": scan}},
                  {"boxes_from": "instances", "patch_size": [64, 64], "patches_per_case": 2,
                   "val_patches_per_case": 1, "score_threshold": 0.0, "detections_per_image": 20}, "nuclei")  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["kind"] == "detection" and metrics["n"] == 4 and metrics["n_true"] > 0
    for name in ("froc_mean", "map_10", "map_50", "sensitivity_at_1_fp", "sensitivity_size_1"):
        value = metrics["metrics"][name]
        assert 0.0 <= value["value"] <= 1.0 and value["ci_low"] <= value["ci_high"]
    cases = _rows(run / "cases_test.csv")
    assert len(cases) == 4 and sum(int(c["true_boxes"]) for c in cases) == metrics["n_true"]
    run_json = json.loads((run / "run.json").read_text())
    shapes = run_json["model"]["args"]["anchor_shapes"]
    assert len(shapes) == 3 and all(len(s) == 2 for s in shapes)  # derived from the training boxes
    assert "Detections" in (run / "report.html").read_text()

    image = nuclei / "imagesTr" / "nuclei_r1_c1.tif"
    out = tmp_path / "boxes.csv"
    assert main(["predict", str(run), str(image), "-o", str(out)]) == 0
    rows = _rows(out)
    assert list(rows[0]) == ["path", "class", "score", "voxel_x_min", "voxel_x_max", "voxel_y_min", "voxel_y_max",
                             "world_x_min", "world_x_max", "world_y_min", "world_y_max"]
    found = [r for r in rows if r["score"]]
    assert len(found) == len(rows) == 20 and all(r["path"] == str(image) and r["class"] == "nucleus" for r in found)
    for r in found:
        for axis in "xy":
            low, high = float(r[f"voxel_{axis}_min"]), float(r[f"voxel_{axis}_max"])
            assert 0.0 <= low <= high <= 128.0
            assert float(r[f"world_{axis}_min"]) == pytest.approx(low)  # a 2D image: pixels


def test_trains_and_predicts_on_synthetic_volumes(tmp_path):
    from biomx.modalities import get_modality
    from biomx.tasks.detection.lesion_boxes import write_lesion_detection_dataset

    spec = write_lesion_detection_dataset(tmp_path / "lesions", n_cases=4, seed=1, shape=(32, 32, 16))["dataset"]
    scan = {"intensity": "ct", "ct_window": [-100, 150], "crop_foreground": False,
            "cache_dir": str(tmp_path / "cache")}  # fmt: skip
    cfg = _config(tmp_path, {"modality": "volume", "source": "msd", "path": str(spec.parent),
                             "split": {"method": "random", "val": 0.25, "test": 0.25, "seed": 0}, "volume": scan},
                  {"patch_size": [32, 32, 16], "patches_per_case": 2, "val_patches_per_case": 1,
                   "sw_batch_size": 2, "score_threshold": 0.0, "detections_per_image": 5}, "lesions")  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = next((tmp_path / "runs").iterdir())
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == 1 and metrics["n_true"] >= 1 and "froc_mean" in metrics["metrics"]
    assert len(_rows(run / "predictions_test.csv")) == 5
    volume = spec.parent / "imagesTr" / "lesion_003.nii.gz"  # stored in another voxel order than RAS
    out = tmp_path / "boxes.csv"
    assert main(["predict", str(run), str(volume), "-o", str(out)]) == 0
    rows = _rows(out)
    spacing = get_modality("volume").read_scan(volume).spacing
    assert len(rows) == 5 and "voxel_z_max" in rows[0]
    for r in rows:  # RAS voxels: world edges are voxel edges times the spacing
        for axis, mm in zip("xyz", spacing, strict=True):
            voxels = float(r[f"voxel_{axis}_max"]) - float(r[f"voxel_{axis}_min"])
            world = float(r[f"world_{axis}_max"]) - float(r[f"world_{axis}_min"])
            assert world == pytest.approx(voxels * mm, rel=1e-4, abs=1e-4)
    # The lesions from MONAI's JSON (world LPS, centre + size; one box per generated lesion, where the
    # mask's components merge touching lesions): the same cases and split, at least as many boxes
    cfg_json = yaml.safe_load(cfg.read_text())
    cfg_json["task"]["boxes"] = str(spec.parent / "boxes.json")
    cfg_json["output"]["dir"] = str(tmp_path / "runs_json")
    cfg_json["model"]["ensemble"] = 2  # the members' boxes fused
    cfg_json["task"]["fusion"] = "wbf"
    (tmp_path / "json.yaml").write_text(yaml.safe_dump(cfg_json))
    assert main(["train", str(tmp_path / "json.yaml")]) == 0
    run_json = next((tmp_path / "runs_json").iterdir())
    assert sorted(p.name for p in (run_json / "members").iterdir()) == ["0", "1"]
    again = json.loads((run_json / "test_metrics.json").read_text())
    assert again["n_true"] >= metrics["n_true"] and again["n_found"] == 5
    split_json, split_mask = _rows(run_json / "split.csv"), _rows(run / "split.csv")
    assert [(r["id"], r["split"]) for r in split_json] == [(r["id"], r["split"]) for r in split_mask]
    count = lambda r: int(r["label"].split()[0]) if r["label"] != "none" else 0  # noqa: E731
    assert all(count(a) >= count(b) for a, b in zip(split_json, split_mask, strict=True))
    assert sum(map(count, split_json)) > sum(map(count, split_mask))  # lesion_001: two lesions touch


def test_world_boxes_agree_with_the_lesion_box_file(tmp_path):
    """Mask boxes put in world coordinates through the scan's geometry are the RAS millimetres the
    lesion writer stores in boxes.csv, for every case, stored in RAS or in another voxel order."""
    from biomx.modalities import get_modality
    from biomx.tasks.detection.inference import to_world
    from biomx.tasks.detection.lesion_boxes import write_lesion_detection_dataset

    files = write_lesion_detection_dataset(tmp_path / "l", n_cases=4, seed=2, shape=(32, 32, 16))
    volume, root = get_modality("volume"), files["dataset"].parent
    rows, compared = _rows(files["csv"]), 0
    for k in range(4):
        name = f"lesion_{k:03d}"
        image = volume.read_scan(root / "imagesTr" / f"{name}.nii.gz")
        mask = volume.read_scan(root / "labelsTr" / f"{name}.nii.gz", mask=True)
        boxes, _ = mask_boxes(mask.array, "components", 1)
        world = to_world(boxes, volume.scan_reference(image), image.spacing)
        stored = np.array([[float(r[f"{a}_{e}"]) for e in ("min", "max") for a in "xyz"] for r in rows
                           if name in r["image"]])  # fmt: skip
        if len(world) == len(stored):  # touching lesions are one component but two rows
            order = lambda b: b[np.lexsort(b.T[::-1])]  # noqa: E731
            np.testing.assert_allclose(order(world), order(stored), atol=1e-3)
            compared += 1
    assert compared >= 2


def test_boxes_from_a_box_file_for_images_without_masks(tmp_path, nuclei, capsys):
    """Images only (no label in dataset.json) and a CSV of voxel boxes: the same boxes as the masks."""
    import tifffile

    info = json.loads((nuclei / "dataset.json").read_text())
    rows, n_boxes = ["image,x_min,y_min,x_max,y_max,label"], 0
    for case in info["training"]:
        boxes, _ = mask_boxes(tifffile.imread(nuclei / case["label"]), "instances", 1)
        rows += [f"{case['image']}," + ",".join(f"{v:g}" for v in b) + ",0" for b in boxes] or [f"{case['image']},,,,,"]
        n_boxes += len(boxes)
        del case["label"]
    (nuclei.parent / "images_only").mkdir()
    only = nuclei.parent / "images_only"
    (only / "imagesTr").symlink_to(nuclei / "imagesTr")
    (only / "dataset.json").write_text(json.dumps(info))
    (only / "boxes.csv").write_text("\n".join(rows) + "\n")
    scan = {"intensity": "minmax", "crop_foreground": False, "cache_dir": str(tmp_path / "cache")}
    data = {"modality": "image", "source": "msd", "path": str(only), "image": {"scan": scan},
            "split": {"method": "random", "val": 0.125, "test": 0.25, "seed": 0}}  # fmt: skip
    task = {"boxes": "boxes.csv", "patch_size": [64, 64], "patches_per_case": 1, "val_patches_per_case": 1}  # in only/
    assert main(["train", str(_config(tmp_path, data, task, "from-file"))]) == 0
    run = next((tmp_path / "runs").iterdir())
    split = _rows(run / "split.csv")
    assert len(split) == 16 and sum(int(r["label"].split()[0]) for r in split if r["label"] != "none") == n_boxes
    assert json.loads((run / "test_metrics.json").read_text())["n"] == 4
    capsys.readouterr()
    (only / "bad.csv").write_text("image,x_min,y_min,x_max,y_max\nimagesTr/nowhere.tif,1,1,5,5\n")
    task["boxes"] = str(only / "bad.csv")
    assert main(["train", str(_config(tmp_path, data, task, "bad-file"))]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv" in err[0] and "nowhere.tif" in err[0], err


def test_bad_config_lines(tmp_path, nuclei, capsys):
    data = {"modality": "image", "source": "msd", "path": str(nuclei),
            "image": {"scan": {"cache_dir": str(tmp_path / "cache")}}}  # fmt: skip
    for task, expected in [
        ({"patch_size": [60, 60]}, "task.patch_size: every size must divide by 16"),
        ({}, "task.patch_size: required for detection"),
        ({"patch_size": [64, 64, 64]}, "task.patch_size: 3 values for 2D data"),
        ({"patch_size": [64, 64], "boxes_from": "components"}, "set task.boxes_from: instances"),
        ({"patch_size": [64, 64], "nms": 0.3}, "task.nms"),
        ({"patch_size": [64, 64], "boxes": str(tmp_path / "missing.csv")}, "missing.csv: no such file"),
        ({"patch_size": [64, 64], "boxes": str(nuclei / "dataset.json")}, "dataset.json: training[0]: 'box' and 'label'"),
    ]:
        assert main(["train", str(_config(tmp_path, data, task, "bad"))]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    # the checks shared with segmentation (tasks/spatial.py), in detection's words
    wrong = {**data, "source": "folder", "image": {**data["image"], "size": [64, 64]}}
    assert main(["train", str(_config(tmp_path, wrong, {"patch_size": [64, 64]}, "bad"))]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: task.kind: detection reads images (and masks, or task.boxes) from data.source: msd; "
                   "not 'folder'"]  # fmt: skip
    tabular = validate({"data": {"modality": "tabular", "source": "csv", "path": "rows.csv", "label_column": "y"},
                        "task": {"kind": "detection", "patch_size": [64, 64]}})  # fmt: skip
    with pytest.raises(ConfigError, match="^task.kind: detection needs images or volumes; data.modality 'tabular' "
                                          "has no pixels to put boxes on$"):  # fmt: skip
        check_config(tabular, get_modality("tabular"))


def test_anchor_shapes_follow_the_boxes():
    rng = np.random.default_rng(0)
    small = rng.normal(10, 1, (50, 2))
    large = rng.normal(40, 3, (50, 2))
    boxes = [np.concatenate([np.zeros((100, 2)), np.concatenate([small, large])], axis=1)]
    shapes = np.asarray(derive_anchor_shapes(boxes, 2, 3, [64, 64]))
    # two clusters, divided by 2 (the middle of three levels scaled 1, 2, 4)
    np.testing.assert_allclose(shapes, [[5, 5], [20, 20]], rtol=0.1)
    assert derive_anchor_shapes([np.zeros((0, 4))], 3, 3, [64, 64]) == [[16.0, 16.0]]  # no boxes: a quarter patch


def test_mask_boxes_instances_and_components():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:5, 2:6] = 7
    mask[5:8, 2:6] = 9  # touches 7: two instances, one component
    mask[12:15, 12:18] = 1
    boxes, labels = mask_boxes(mask, "instances", 1)
    np.testing.assert_array_equal(boxes, [[12, 12, 15, 18], [2, 2, 5, 6], [5, 2, 8, 6]])
    assert labels.tolist() == [0, 0, 0]
    binary = (mask > 0).astype(np.uint8)
    boxes, labels = mask_boxes(binary, "auto", 1)
    np.testing.assert_array_equal(boxes, [[2, 2, 8, 6], [12, 12, 15, 18]])
    boxes, labels = mask_boxes(np.where(mask == 1, 2, binary), "components", 2)  # class per value
    assert sorted(labels.tolist()) == [0, 1]


def test_patch_targets_are_clipped_and_padded():
    patches = BoxPatches(Path("."), ["k"], [np.zeros((0, 4))], [np.zeros(0)], [32, 32], 1, 1.0, 4)
    boxes = np.array([[10.0, 10, 20, 20], [28, 28, 40, 40], [0, 0, 2, 2]])
    target = patches.target(boxes, np.array([0, 0, 0]), [8, 8])
    np.testing.assert_array_equal(target[0], [2, 2, 12, 12, 0])
    # [28, 40) keeps [28, 40) of the patch [8, 40): whole; [0, 2) is outside
    np.testing.assert_array_equal(target[1], [20, 20, 32, 32, 0])
    assert (target[2:, 4] == -1).all()


def test_boxes_go_back_to_the_scan_grid():
    image = np.random.default_rng(0).normal(size=(1, 40, 30)).astype(np.float32)
    settings = {"spacing": [2.0, 1.0], "intensity": "none", "ct_window": [0, 1], "nonzero": False,
                "crop_foreground": False, "patch_size": [32, 32]}  # fmt: skip
    _, _, geometry = preprocess(image, (1.0, 1.0), settings)
    assert geometry["resampled"] == [20, 30] and geometry["pad"][0] == [6, 6]
    # a box of rows [6+2, 6+5) in the padded, half-resolution grid is rows [4, 10) of the scan
    np.testing.assert_allclose(to_scan_voxels(np.array([[8.0, 1, 11, 5]]), geometry), [[4, 0, 10, 4]])


def test_scores_of_perfect_and_noisy_detections():
    truth = [(np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]))]
    perfect = [(truth[0][0].copy(), np.array([0.9, 0.8]), np.array([0, 0]))]
    result = evaluate_detections(perfect, truth, classes=["lesion"], n_bootstrap=5)["metrics"]
    assert result["map_50"]["value"] == pytest.approx(1.0) and result["froc_mean"]["value"] == pytest.approx(1.0)
    noisy = [(np.array([[50.0, 50, 60, 60], [0, 0, 10, 10]]), np.array([0.95, 0.5]), np.array([0, 0]))]
    hits, found = match(noisy[0], truth[0])
    assert hits.tolist() == [False, True] and found.tolist() == [True, False]
    result = evaluate_detections(noisy, truth, classes=["lesion"], n_bootstrap=5)["metrics"]
    assert result["map_50"]["value"] < 0.5  # one of two found, after a false positive
    assert result["sensitivity_at_1_fp"]["value"] == pytest.approx(0.5)
    assert result["sensitivity_at_0.125_fp"]["value"] == 0.0


@pytest.mark.parametrize("settings", [{}, {"box_loss": "giou", "cls_loss": "focal", "atss_candidates": 6}])
def test_loss_is_finite_and_learns_a_box(settings):
    torch.manual_seed(0)
    task = build_detection_task(["cell"], 2, 1, [32, 32], **settings)
    assert {k: task.info()[k] for k in settings} == settings  # run.json keeps them for predict
    assert task.detector.decode_pred == (settings.get("box_loss") == "giou")  # GIoU scores decoded boxes
    model = retinanet(1, 1, 2, [[8.0, 8.0]], **TINY)
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:16, 8:16] = 1.0
    y = torch.full((2, 3, 5), -1.0)
    y[:, 0] = torch.tensor([8.0, 8, 16, 16, 0])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(15):
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    model.eval()
    boxes, scores, _ = task.detect(model(x[:1]), [32, 32])[0]
    assert len(boxes) and np.abs(boxes[np.argmax(scores)] - [8, 8, 16, 16]).max() < 3


def test_detached_anchors_leave_the_loss_and_head_gradients_unchanged():
    torch.manual_seed(0)
    task = build_detection_task(["cell"], 2, 1, [32, 32])
    model = retinanet(1, 1, 2, [[8.0, 8.0]], **TINY)
    x = torch.rand(2, 1, 32, 32)
    y = torch.full((2, 3, 5), -1.0)
    y[:, 0] = torch.tensor([8.0, 8, 16, 16, 0])
    y[1, 1] = torch.tensor([18.0, 4, 30, 14, 0])

    def grads(attached: bool) -> tuple[float, list[torch.Tensor], torch.Tensor]:
        model.zero_grad()
        out = model(x)
        head, anchors, per_level = task.split(out)
        if attached:  # as before: the anchor columns of the output itself, in the graph
            anchors = out.float()[0, 0, :, 5:9]
            assert anchors.requires_grad
        else:
            assert not anchors.requires_grad
        torch.manual_seed(1)  # the hard-negative sampler draws from the global generator
        losses = task.detector.compute_loss(head, task.target_dicts(y), [anchors] * 2, per_level)
        loss = losses["classification"] + losses["box_regression"]
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], anchors

    loss_before, before, _ = grads(True)
    loss_after, after, anchors = grads(False)
    assert loss_after == loss_before > 0
    assert sum(float(g.abs().sum()) for g in after) > 0
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.manual_seed(1)
    assert task.loss(model(x), y).item() == loss_after  # task.loss is the detached path


def test_a_patch_without_boxes_is_a_negative():
    task = build_detection_task(["cell"], 2, 1, [32, 32])
    model = retinanet(1, 1, 2, [[8.0, 8.0]], **TINY)
    none = torch.full((2, 3, 5), -1.0)
    loss = task.loss(model(torch.rand(2, 1, 32, 32)), none)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0  # every sampled anchor is a negative
    assert np.isnan(task.quick_metrics(model(torch.rand(2, 1, 32, 32)).detach().numpy(), none.numpy())["ap50"])
