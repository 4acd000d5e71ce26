"""Listing MSD-style segmentation datasets (dataset.json, or imagesTr/ + labelsTr/ alone) and
reading 2D image and mask files with their raw values.

Files are real: nibabel's anatomical.nii as the volume, the packaged nuclei TIFF for 2D.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from biomx.errors import DataError
from biomx.modalities.common.msd import is_2d_file, read_msd, read_plane
from biomx.modalities.image.starter_data import NUCLEI_IMAGE

ANATOMICAL = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"


def _volume_pair(root: Path, name: str, image_name: str | None = None) -> None:
    """A real volume in imagesTr/ and a mask on its grid in labelsTr/."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    img = nib.load(ANATOMICAL)
    nib.save(img, root / "imagesTr" / (image_name or f"{name}.nii.gz"))
    mask = (np.asarray(img.dataobj) > np.percentile(np.asarray(img.dataobj), 90)).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, img.affine), root / "labelsTr" / f"{name}.nii.gz")


def _msd(root: Path, names: list[str], **extra) -> Path:
    for name in names:
        _volume_pair(root, name)
    (root / "imagesTr" / f"._{names[0]}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS junk")
    info = {"name": "Task09_Spleen", "tensorImageSize": "3D", "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "spleen"}, "numTraining": len(names),
            "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
            "test": []}  # fmt: skip
    info.update(extra)
    (root / "dataset.json").write_text(json.dumps(info, indent=2))
    return root


def _error(root: Path) -> str:
    with pytest.raises(DataError) as e:
        read_msd(root)
    message = str(e.value)
    assert "\n" not in message
    return message


# ---- dataset.json ------------------------------------------------------------------------------


def test_dataset_json_is_read_in_order(tmp_path):
    root = _msd(tmp_path / "Task09", ["spleen_2", "spleen_10"],
                labels={"2": "edema", "0": "background", "1": "tumour"}, tensorImageSize="4D",
                modality={"1": "T1w", "0": "FLAIR"}, test=["./imagesTs/spleen_1.nii.gz"])  # fmt: skip
    (root / "imagesTs").mkdir()
    shutil.copy(ANATOMICAL, root / "imagesTs" / "spleen_1.nii.gz")
    ds = read_msd(root)
    assert ds.name == "Task09_Spleen" and ds.root == root
    assert ds.classes == ["background", "tumour", "edema"]  # by label value, not by JSON order
    assert ds.channels == ["FLAIR", "T1w"]
    assert ds.spatial_dims == 3  # "4D" = multichannel 3D
    assert [c.id for c in ds.cases] == ["spleen_2", "spleen_10"]  # dataset.json order
    assert ds.cases[0].image == root / "imagesTr" / "spleen_2.nii.gz" and ds.cases[0].image.is_file()
    assert ds.cases[1].label == root / "labelsTr" / "spleen_10.nii.gz"
    assert ds.test_images == [root / "imagesTs" / "spleen_1.nii.gz"]


@pytest.mark.parametrize(("labels", "expected"), [
    ({"0": "background", "2": "tumour"}, "key '1' is missing"),
    ({"1": "tumour", "2": "cyst"}, "key '0' is missing"),
    ({"0": "background", "one": "tumour"}, "labels key 'one' is not an integer"),
    ({"0": "background", "1": "tumour", "01": "x"}, "labels key '01' repeats the value 1"),
])  # fmt: skip
def test_label_keys_must_be_contiguous(tmp_path, labels, expected):
    message = _error(_msd(tmp_path, ["a"], labels=labels))
    assert message.startswith(f"{tmp_path / 'dataset.json'}: ") and expected in message


def test_invalid_json_names_the_line(tmp_path):
    root = _msd(tmp_path, ["a"])
    text = (root / "dataset.json").read_text().splitlines()
    text[3] = text[3] + ","  # a trailing comma on line 4 breaks the object
    (root / "dataset.json").write_text("\n".join(text))
    message = _error(root)
    assert message.startswith(f"{root / 'dataset.json'}: invalid JSON at line")
    assert "line 5" in message or "line 4" in message


def test_missing_training_key(tmp_path):
    root = _msd(tmp_path, ["a"])
    info = json.loads((root / "dataset.json").read_text())
    del info["training"]
    (root / "dataset.json").write_text(json.dumps(info))
    assert 'missing key "training"' in _error(root)


def test_listed_file_not_found_names_it(tmp_path):
    root = _msd(tmp_path, ["a", "b"])
    (root / "labelsTr" / "b.nii.gz").unlink()
    message = _error(root)
    assert "dataset.json: training[1].label './labelsTr/b.nii.gz': file not found" in message


def test_duplicate_case_ids(tmp_path):
    root = _msd(tmp_path, ["a"])
    info = json.loads((root / "dataset.json").read_text())
    info["training"] *= 2
    (root / "dataset.json").write_text(json.dumps(info))
    assert "case id 'a' appears twice" in _error(root)


def test_missing_folder(tmp_path):
    assert "dataset folder not found" in _error(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert f"{tmp_path / 'empty' / 'imagesTr'}: folder not found" in _error(tmp_path / "empty")


def test_nnunet_v1_channel_file_is_found(tmp_path):
    """nnU-Net v1 lists ./imagesTr/x.nii.gz but stores x_0000.nii.gz."""
    _volume_pair(tmp_path, "x", image_name="x_0000.nii.gz")
    info = {"labels": {"0": "background", "1": "liver"},
            "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(info))
    ds = read_msd(tmp_path)
    assert ds.cases[0].id == "x" and ds.cases[0].image.name == "x_0000.nii.gz"
    assert ds.spatial_dims == 3 and ds.channels == []


def test_tensor_image_size_must_match_the_files(tmp_path):
    root = _msd(tmp_path, ["a"], tensorImageSize="2D")
    assert "tensorImageSize is 2D but a.nii.gz is not a 2D image file" in _error(root)


# ---- folders without dataset.json ------------------------------------------------------------


def test_folders_pair_by_name_with_nnunet_suffix(tmp_path):
    _volume_pair(tmp_path, "case_01", image_name="case_01_0000.nii.gz")
    _volume_pair(tmp_path, "case_02")
    (tmp_path / "imagesTr" / "._case_02.nii.gz").write_bytes(b"junk")  # macOS resource forks
    (tmp_path / "labelsTr" / "._case_02.nii.gz").write_bytes(b"junk")
    (tmp_path / "imagesTr" / "notes.txt").write_text("not an image")
    (tmp_path / "imagesTs").mkdir()
    shutil.copy(ANATOMICAL, tmp_path / "imagesTs" / "case_03.nii")
    ds = read_msd(tmp_path)
    assert [(c.id, c.image.name, c.label.name) for c in ds.cases] == [
        ("case_01", "case_01_0000.nii.gz", "case_01.nii.gz"), ("case_02", "case_02.nii.gz", "case_02.nii.gz")]
    assert ds.classes == ["background", "foreground"] and ds.spatial_dims == 3
    assert ds.test_images == [tmp_path / "imagesTs" / "case_03.nii"]


def test_unpaired_files_are_named(tmp_path):
    _volume_pair(tmp_path, "a")
    shutil.copy(ANATOMICAL, tmp_path / "imagesTr" / "b.nii")
    message = _error(tmp_path)
    assert message.startswith(f"{tmp_path / 'imagesTr' / 'b.nii'}: no mask for this image")
    (tmp_path / "imagesTr" / "b.nii").unlink()
    shutil.copy(tmp_path / "labelsTr" / "a.nii.gz", tmp_path / "labelsTr" / "c.nii.gz")
    assert _error(tmp_path).startswith(f"{tmp_path / 'labelsTr' / 'c.nii.gz'}: no image for this mask")


def test_separate_channel_files_are_refused(tmp_path):
    _volume_pair(tmp_path, "a", image_name="a_0000.nii.gz")
    shutil.copy(ANATOMICAL, tmp_path / "imagesTr" / "a_0001.nii")
    assert "nnU-Net channel file 0001" in _error(tmp_path)


def test_2d_folders(tmp_path):
    image = tifffile.imread(NUCLEI_IMAGE)[:64, :64]
    for name in ("t1", "t2"):
        (tmp_path / "imagesTr").mkdir(exist_ok=True)
        (tmp_path / "labelsTr").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "imagesTr" / f"{name}.tif", image)
        Image.fromarray((image > 60).astype(np.uint8)).save(tmp_path / "labelsTr" / f"{name}.png")
    ds = read_msd(tmp_path)
    assert ds.spatial_dims == 2 and [c.id for c in ds.cases] == ["t1", "t2"]
    shutil.copy(ANATOMICAL, tmp_path / "imagesTr" / "t3.nii")
    shutil.copy(ANATOMICAL, tmp_path / "labelsTr" / "t3.nii")
    assert "mixes 2D images (t1.tif) and 3D volumes (t3.nii)" in _error(tmp_path)


# ---- 2D files ------------------------------------------------------------------------------------


def test_read_plane_keeps_raw_values(tmp_path):
    raw = tifffile.imread(NUCLEI_IMAGE)  # uint16, values up to a few hundred
    image = read_plane(NUCLEI_IMAGE)
    assert image.dtype == np.float32 and image.shape == (1, *raw.shape)
    np.testing.assert_array_equal(image[0], raw.astype(np.float32))  # not rescaled to [0, 1]
    rgb = np.stack([raw[:32, :32] % 256, raw[:32, :32] // 2 % 256, np.zeros((32, 32))], -1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_plane(tmp_path / "rgb.png"), rgb.transpose(2, 0, 1).astype(np.float32))
    assert is_2d_file(tmp_path / "rgb.png") and is_2d_file(Path("x.TIFF")) and not is_2d_file(ANATOMICAL)


def test_read_plane_masks(tmp_path):
    labels = (tifffile.imread(NUCLEI_IMAGE)[:40, :50] // 60).astype(np.uint8)  # classes 0..3
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tmp_path / "palette.png")  # VOC style: colours shown, class ids stored
    got = read_plane(tmp_path / "palette.png", mask=True)
    assert got.shape == (40, 50) and np.issubdtype(got.dtype, np.integer)
    np.testing.assert_array_equal(got, labels)
    Image.fromarray(np.stack([labels] * 3, -1)).save(tmp_path / "grey_as_rgb.png")
    np.testing.assert_array_equal(read_plane(tmp_path / "grey_as_rgb.png", mask=True), labels)
    tifffile.imwrite(tmp_path / "float.tif", labels.astype(np.float32))
    np.testing.assert_array_equal(read_plane(tmp_path / "float.tif", mask=True), labels)
    tifffile.imwrite(tmp_path / "fraction.tif", labels.astype(np.float32) + 0.5)
    with pytest.raises(DataError, match="fraction.tif: mask holds non-integer values"):
        read_plane(tmp_path / "fraction.tif", mask=True)
    Image.fromarray(np.stack([labels, labels * 2, labels], -1)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.png: mask has 3 differing colour channels"):
        read_plane(tmp_path / "colour.png", mask=True)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_truncated_files(tmp_path, suffix):
    raw = tifffile.imread(NUCLEI_IMAGE)
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(whole, raw)
    else:
        Image.fromarray(raw.astype(np.uint8)).save(whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    for mask in (False, True):
        with pytest.raises(DataError, match=f"{cut}: cannot read image: "):
            read_plane(cut, mask=mask)
    with pytest.raises(DataError, match="file not found"):
        read_plane(tmp_path / f"missing{suffix}")


def test_tiff_stack_is_not_a_plane(tmp_path):
    stack = np.stack([tifffile.imread(NUCLEI_IMAGE)[:32, :32]] * 5)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    with pytest.raises(DataError, match="stack.tif: TIFF holds .* expected one 2D image"):
        read_plane(tmp_path / "stack.tif")
