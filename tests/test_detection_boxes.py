"""Detection boxes: conversions, world <-> voxel, IoU (against MONAI's), NMS, WBF, boxes from masks
(the real nuclei instance mask), box files (CSV and MONAI's LUNA16 JSON layout) and their bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from biomx.tasks.detection.boxes import (
    box_iou,
    box_volume,
    boxes_from_instance_mask,
    boxes_to_voxel,
    boxes_to_world,
    centre_size_from_corners,
    centres_in_boxes,
    clip_boxes,
    corners_from_centre_size,
    nms,
    nonempty,
    weighted_box_fusion,
)


def test_centre_size_round_trip():
    boxes = corners_from_centre_size([[5.0, 6.0, 7.0]], [[2.0, 4.0, 6.0]])
    np.testing.assert_array_equal(boxes, [[4, 4, 4, 6, 8, 10]])
    centre, size = centre_size_from_corners(boxes)
    np.testing.assert_array_equal(centre, [[5, 6, 7]])
    np.testing.assert_array_equal(size, [[2, 4, 6]])
    assert box_volume(boxes)[0] == 48


def test_iou_hand_computed_2d_and_3d():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [2, 2, 4, 4], [0, 0, 2, 2]], float)
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0, 1.0]])
    a3 = np.array([[0, 0, 0, 2, 2, 2]], float)
    b3 = np.array([[1, 1, 1, 3, 3, 3]], float)
    np.testing.assert_allclose(box_iou(a3, b3), [[1 / 15]])
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


@pytest.mark.parametrize("dims", [2, 3])
def test_iou_agrees_with_monai(dims):
    from monai.data.box_utils import box_iou as monai_iou

    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 20, size=(30, dims))
    a = np.concatenate([lo, lo + rng.uniform(1, 10, size=(30, dims))], axis=1)
    lo = rng.uniform(0, 20, size=(25, dims))
    b = np.concatenate([lo, lo + rng.uniform(1, 10, size=(25, dims))], axis=1)
    reference = monai_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), reference, atol=1e-6)


def test_world_voxel_round_trip_and_half_voxel_convention():
    affine = np.diag([0.5, 0.8, 2.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 30.0]
    voxel = np.array([[2, 3, 4, 6, 9, 5]], float)  # voxels 2..5, 3..8, 4 along the three axes
    world = boxes_to_world(voxel, affine)
    # voxel index 2 has its centre at -10 + 2 * 0.5 = -9 mm; its lower face half a voxel below
    np.testing.assert_allclose(world[0, [0, 3]], [-9.0 - 0.25, -10 + 5 * 0.5 + 0.25])
    np.testing.assert_allclose(boxes_to_voxel(world, affine), voxel)
    # an axis flip (LPS-like) still gives min <= max
    flipped = np.diag([-1.0, -1.0, 1.0, 1.0])
    w = boxes_to_world(voxel, flipped)
    assert (w[:, :3] <= w[:, 3:]).all()
    np.testing.assert_allclose(boxes_to_voxel(w, flipped), voxel)
    # 2D with a 3x3 affine
    a2 = np.array([[2.0, 0, 1], [0, 3.0, 0], [0, 0, 1]])
    np.testing.assert_allclose(boxes_to_voxel(boxes_to_world([[1, 1, 4, 5]], a2), a2), [[1, 1, 4, 5]])


def test_oblique_affine_gives_the_hull():
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0, 0, 1]])
    world = boxes_to_world([[0.5, 0.5, 2.5, 2.5]], rot)  # a 2x2 square centred on index 1
    np.testing.assert_allclose(world, [[-np.sqrt(2), np.sqrt(2) - np.sqrt(2), np.sqrt(2), np.sqrt(2) + np.sqrt(2)]])


def test_nms_keeps_the_best_of_each_cluster():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3, 2])
    # with labels, boxes of different classes do not suppress each other
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, labels=[0, 1, 0, 0]), [3, 1, 2])
    assert nms(np.zeros((0, 6)), [], 0.5).shape == (0,)


def test_nms_agrees_with_monai():
    from monai.data.box_utils import non_max_suppression

    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 30, size=(60, 3))
    boxes = np.concatenate([lo, lo + rng.uniform(3, 12, size=(60, 3))], axis=1)
    scores = rng.uniform(size=60)
    reference = non_max_suppression(torch.as_tensor(boxes), torch.as_tensor(scores), 0.3).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), reference)


def test_nms_limit_stops_early_with_the_same_boxes():
    from biomx.tasks.detection.inference import fuse
    from biomx.tasks.detection.task import build_detection_task

    rng = np.random.default_rng(3)
    lo = rng.uniform(0, 200, size=(3000, 2))  # many overlapping window boxes, ties in score included
    boxes = np.concatenate([lo, lo + rng.uniform(4, 20, size=(3000, 2))], axis=1)
    scores, labels = rng.choice(rng.uniform(size=500), 3000), rng.integers(0, 2, 3000)
    full = nms(boxes, scores, 0.2, labels)
    assert len(full) > 100
    for limit in (0, 1, 100, len(full), len(full) + 5):
        np.testing.assert_array_equal(nms(boxes, scores, 0.2, labels, limit=limit), full[:limit])
    task = build_detection_task(["a", "b"], 2, 1, [32, 32], nms_iou=0.2, detections_per_image=100)
    found = fuse([(boxes[:1000], scores[:1000], labels[:1000]), (boxes[1000:], scores[1000:], labels[1000:])],
                 task, 2)  # fmt: skip
    order = np.argsort(-scores[full], kind="stable")[:100]  # fuse as it was: full NMS, then the best 100
    for got, want in zip(found, (boxes[full][order], scores[full][order], labels[full][order]), strict=True):
        np.testing.assert_array_equal(got, want)


def test_weighted_box_fusion_hand_computed():
    a = ([[0, 0, 10, 10]], [0.9], [1])
    b = ([[2, 2, 12, 12], [50, 50, 60, 60]], [0.3, 0.6], [1, 1])
    boxes, scores, labels = weighted_box_fusion([a, b], iou=0.4)  # their IoU is 64/136
    # the two overlapping boxes fuse: corners weighted 0.9 : 0.3, score mean 0.6 (both sources)
    np.testing.assert_allclose(boxes[0], [0.5, 0.5, 10.5, 10.5])
    np.testing.assert_allclose(scores, [0.6, 0.3])  # the lone box: 0.6 * 1/2 sources
    np.testing.assert_array_equal(labels, [1, 1])
    _, scores, _ = weighted_box_fusion([a, b], iou=0.4, conf="max")
    np.testing.assert_allclose(scores, [0.9, 0.6])  # the best member's score
    # different labels never fuse
    boxes, scores, labels = weighted_box_fusion([([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.4], [0, 1])], 0.5)
    assert len(boxes) == 2 and sorted(labels.tolist()) == [0, 1]


def test_clip_and_nonempty():
    clipped = clip_boxes([[-2, 3, 5, 12], [20, 20, 25, 25]], (10, 10))
    np.testing.assert_array_equal(clipped, [[0, 3, 5, 10], [10, 10, 10, 10]])
    np.testing.assert_array_equal(nonempty(clipped), [True, False])


def test_boxes_from_instance_mask_2d_3d():
    mask = np.zeros((10, 12), np.uint16)
    mask[2:5, 3:9] = 4
    mask[7, 0] = 2
    boxes, ids = boxes_from_instance_mask(mask)
    np.testing.assert_array_equal(ids, [2, 4])
    np.testing.assert_array_equal(boxes, [[7, 0, 8, 1], [2, 3, 5, 9]])
    vol = np.zeros((6, 7, 8), np.int32)
    vol[1:3, 2:6, 4:8] = 1
    boxes, ids = boxes_from_instance_mask(vol)
    np.testing.assert_array_equal(boxes, [[1, 2, 4, 3, 6, 8]])
    assert boxes_from_instance_mask(np.zeros((4, 4), int))[0].shape == (0, 4)
    # the voxel centres of an instance all lie inside its box
    assert centres_in_boxes(np.argwhere(vol == 1) + 0.5, boxes).all()


def test_boxes_from_the_real_nuclei_mask():
    import tifffile

    from biomx.modalities.image.starter_data import NUCLEI_MASK

    mask = tifffile.imread(NUCLEI_MASK)
    boxes, ids = boxes_from_instance_mask(mask)
    assert len(boxes) == len(np.unique(mask)) - 1 == 125
    sizes = boxes[:, 2:] - boxes[:, :2]
    # nuclei in this 512x512 field are roughly 5-40 pixels across, none filling the image
    assert sizes.min() >= 2 and sizes.max() <= 80
    assert 8 <= np.median(sizes) <= 30
    # every instance's pixels lie inside its own box
    for box, i in zip(boxes[:10], ids[:10], strict=True):
        assert centres_in_boxes(np.argwhere(mask == i) + 0.5, box[None]).all()


# ---- box files ------------------------------------------------------------------------------

from biomx.errors import DataError  # noqa: E402
from biomx.tasks.detection.annotations import (  # noqa: E402
    ImageGeometry,
    read_box_csv,
    read_monai_json,
    write_box_csv,
    write_monai_json,
)

AFFINE = np.array([[0.7, 0, 0, -20.0], [0, 0.7, 0, 10.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])
IMAGES = {"a.nii.gz": ImageGeometry((64, 64, 40), AFFINE), "b.nii.gz": ((64, 64, 40), AFFINE)}


def _csv(tmp_path, text):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    return path


def test_csv_corners_centres_world_and_negatives(tmp_path):
    path = _csv(tmp_path, "image,x_min,y_min,z_min,x_max,y_max,z_max,label\n"
                          "a.nii.gz,1,2,3,5,6,7,1\n"
                          "b.nii.gz,,,,,,,\n")  # fmt: skip
    found, skips = read_box_csv(path, images=IMAGES)
    np.testing.assert_array_equal(found["a.nii.gz"][0], [[1, 2, 3, 5, 6, 7]])
    np.testing.assert_array_equal(found["a.nii.gz"][1], [1])
    assert found["b.nii.gz"][0].shape == (0, 6) and skips == []  # a negative case
    # the same box as world centre + size, through the affine
    world = boxes_to_world([[1, 2, 3, 5, 6, 7]], AFFINE)
    c, s = centre_size_from_corners(world)
    path = _csv(tmp_path, "Image,X_Center,y_centre,z_centre,width,height,depth,space\n"
                          f"a,{c[0, 0]},{c[0, 1]},{c[0, 2]},{s[0, 0]},{s[0, 1]},{s[0, 2]},world\n")  # fmt: skip
    found, _ = read_box_csv(path, images=IMAGES)
    np.testing.assert_allclose(found["a"][0], [[1, 2, 3, 5, 6, 7]])
    # 2D, with a callable for the geometry
    path = _csv(tmp_path, "image,x_min,y_min,x_max,y_max\nt1,0,0,3,4\n")
    found, _ = read_box_csv(path, images=lambda name: (32, 32) if name == "t1" else None)
    np.testing.assert_array_equal(found["t1"][0], [[0, 0, 3, 4]])
    assert ImageGeometry((32, 32)).affine.shape == (3, 3)  # a 2D image's identity affine
    with pytest.raises(ValueError, match="a 2D image needs a 3x3 affine"):
        ImageGeometry((32, 32), np.eye(4))


def test_csv_write_read_round_trip(tmp_path):
    annotations = {"a.nii.gz": (np.array([[1.5, 2, 3, 5, 6, 7.25]]), np.array([2])),
                   "b.nii.gz": (np.zeros((0, 6)), np.zeros(0, int))}  # fmt: skip
    for space in ("world", "voxel"):
        path = write_box_csv(tmp_path / f"{space}.csv", annotations, images=IMAGES, space=space)
        found, _ = read_box_csv(path, images=IMAGES)
        np.testing.assert_allclose(found["a.nii.gz"][0], annotations["a.nii.gz"][0], atol=1e-4)
        assert found["a.nii.gz"][1].tolist() == [2] and len(found["b.nii.gz"][0]) == 0


@pytest.mark.parametrize(("row", "message"), [
    ("c.nii.gz,1,2,3,5,6,7", "row 2: image 'c.nii.gz' is not in the dataset"),
    ("a.nii.gz,1,2,3,1,6,7", "row 2: zero or negative box size"),
    ("a.nii.gz,1,2,3,0,6,7", "row 2: zero or negative box size"),
    ("a.nii.gz,60,2,3,70,6,7", "row 2: box [60.0, 2.0, 3.0, 70.0, 6.0, 7.0] (voxels) lies 6.0 voxels outside"),
    ("a.nii.gz,1,2,x,5,6,7", "row 2: a coordinate or the label is not a number"),
])  # fmt: skip
def test_csv_bad_rows_one_line_or_counted_skip(tmp_path, row, message):
    header = "image,x_min,y_min,z_min,x_max,y_max,z_max\n"
    path = _csv(tmp_path, header + row + "\n" + "a.nii.gz,1,2,3,5,6,7\nb.nii.gz,1,1,1,2,2,2\n")
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: {message}")):
        read_box_csv(path, images=IMAGES)
    found, skips = read_box_csv(path, images=IMAGES, on_error="skip")
    assert len(skips) == 1 and message in skips[0]
    assert len(found["a.nii.gz"][0]) == 1 and len(found["b.nii.gz"][0]) == 1


def test_world_coordinates_given_as_voxel_are_caught(tmp_path):
    # three world-mm boxes (negative x, z beyond 40 slices) read as voxels: most lie outside
    world = boxes_to_world([[10, 10, 10, 14, 14, 14], [30, 30, 5, 34, 36, 9], [5, 40, 20, 9, 44, 25]], AFFINE)
    rows = "\n".join("a.nii.gz," + ",".join(f"{v:.3f}" for v in w) for w in world)
    path = _csv(tmp_path, "image,x_min,y_min,z_min,x_max,y_max,z_max\n" + rows + "\n")
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match="boxes lie outside their images.*world space"):
            read_box_csv(path, images=IMAGES, on_error=on_error)
    found, _ = read_box_csv(path, images=IMAGES, space="world")
    assert len(found["a.nii.gz"][0]) == 3


def test_monai_json_round_trip_and_agreement_with_monai(tmp_path):
    from monai.apps.detection.transforms.box_ops import apply_affine_to_boxes
    from monai.data.box_utils import convert_box_mode
    from monai.data.utils import orientation_ras_lps

    annotations = {"a.nii.gz": (np.array([[10.0, 12, 4, 18, 20, 9], [30, 31, 20, 33, 35, 22]]), np.array([0, 0])),
                   "b.nii.gz": (np.zeros((0, 6)), np.zeros(0, int))}  # fmt: skip
    path = write_monai_json(tmp_path / "fold0.json", annotations, images=IMAGES, extra={"validation": []})
    data = __import__("json").loads(path.read_text())
    assert set(data) == {"training", "validation"} and data["training"][1] == {"image": "b.nii.gz", "box": [],
                                                                               "label": []}
    found, skips = read_monai_json(path, images=IMAGES)
    np.testing.assert_allclose(found["a.nii.gz"][0], annotations["a.nii.gz"][0], atol=1e-3)
    assert skips == [] and len(found["b.nii.gz"][0]) == 0
    # MONAI's own LUNA16 path (cccwhd -> xyzxyz, inverse of the LPS affine) lands on the same boxes,
    # half a voxel lower: MONAI puts voxel i's centre at i, biomx at i + 0.5
    world = torch.as_tensor(data["training"][0]["box"], dtype=torch.float64)
    corners = convert_box_mode(world, src_mode="cccwhd", dst_mode="xyzxyz")
    lps_affine = torch.as_tensor(orientation_ras_lps(AFFINE))
    monai_voxel = apply_affine_to_boxes(corners, torch.linalg.inv(lps_affine)).numpy()
    np.testing.assert_allclose(monai_voxel + 0.5, found["a.nii.gz"][0], atol=1e-3)


def test_monai_json_bad_input(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('{"training": [{"image": "a.nii.gz", "box": [[0, 0, 0, 2, 2]], "label": [0]}]}')
    with pytest.raises(DataError, match=r"f.json: training\[0\] box 0: expected 6 numbers"):
        read_monai_json(path, images=IMAGES)
    path.write_text('{"training": [{"image": "zz.nii.gz", "box": [], "label": []}]}')
    with pytest.raises(DataError, match=r"training\[0\]: image 'zz.nii.gz' is not in the dataset"):
        read_monai_json(path, images=IMAGES)
    assert read_monai_json(path, images=IMAGES, on_error="skip") == ({}, [
        f"{path}: training[0]: image 'zz.nii.gz' is not in the dataset"])
    # voxel coordinates where world millimetres belong: most boxes land outside the scan
    far = np.array(AFFINE)
    far[:3, 3] = [-300.0, 250.0, -900.0]
    path.write_text('{"training": [{"image": "a.nii.gz", "box": [[20, 20, 10, 4, 4, 2], [30, 25, 12, 6, 6, 3]], '
                    '"label": [0, 0]}]}')  # fmt: skip
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match="2 of 2 boxes lie outside their images.*voxel coordinates"):
            read_monai_json(path, images={"a.nii.gz": ((64, 64, 40), far)}, on_error=on_error)
    path.write_text('{"training": [{"image": "zz.nii.gz", "box": [], "label": []}]}')
    with pytest.raises(DataError, match="no list under 'validation'"):
        read_monai_json(path, "validation", images=IMAGES)


# ---- synthetic lesions with boxes --------------------------------------------------------------


def test_lesion_boxes_match_the_masks_biomx_reads_back(tmp_path):
    from scipy import ndimage

    from biomx.modalities.volume.files import read_volume
    from biomx.modalities.volume.lesions import write_lesion_dataset
    from biomx.tasks.detection.lesion_boxes import write_lesion_detection_dataset

    shape = (32, 32, 20)
    written = write_lesion_detection_dataset(tmp_path / "d", n_cases=6, seed=4, shape=shape)
    root = written["dataset"].parent
    geometry, masks = {}, {}
    for k in range(6):
        key = f"imagesTr/lesion_{k:03d}.nii.gz"
        mask = read_volume(root / "labelsTr" / f"lesion_{k:03d}.nii.gz", mask=True)  # case 3: stored LPS
        geometry[key], masks[key] = ImageGeometry(mask.array.shape, mask.affine), mask.array > 0
    from_csv, skips = read_box_csv(written["csv"], images=geometry, space="world")
    from_json, _ = read_monai_json(written["json"], images=geometry)
    assert skips == [] and set(from_csv) == set(from_json) == set(masks)
    n, separate = 0, 0
    for key, mask in masks.items():
        boxes = from_csv[key][0]
        np.testing.assert_allclose(from_json[key][0], boxes, atol=1e-3)
        assert (from_csv[key][1] == 0).all() and len(boxes) >= 1
        snapped = np.round(boxes)
        np.testing.assert_allclose(boxes, snapped, atol=1e-3)  # whole voxels after the world round trip
        # every lesion voxel lies in a box; each box is tight: its lesion reaches all of its faces
        centres = np.argwhere(mask) + 0.5
        assert centres_in_boxes(centres, boxes).any(axis=1).all()
        for box in snapped.astype(int):
            inside = mask[box[0]:box[3], box[1]:box[4], box[2]:box[5]]
            for axis in range(3):
                profile = inside.any(axis=tuple(a for a in range(3) if a != axis))
                assert profile[0] and profile[-1]
        components = ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]
        separate += components == len(boxes)  # lesions that touch are one component, still two boxes
        n += len(boxes)
    assert n >= 6 and separate >= 3
    # the volumes and masks are those of the segmentation dataset, byte for byte
    plain = write_lesion_dataset(tmp_path / "plain", n_cases=6, seed=4, shape=shape).parent
    for folder in ("imagesTr", "labelsTr"):
        assert (root / folder / "lesion_003.nii.gz").read_bytes() == (plain / folder / "lesion_003.nii.gz").read_bytes()
    with pytest.raises(Exception, match="boxes.csv: already exists"):
        write_lesion_detection_dataset(tmp_path / "d", n_cases=6, seed=4, shape=shape)
