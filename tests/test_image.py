"""Tests for biomx.modalities.image (decode, sources, npz, augment, dataset), on real files: MedMNIST, a microscopy TIFF, pydicom's and
nibabel's test files."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from torch.utils.data import DataLoader

from biomx.data.batching import collate_batch
from biomx.errors import DataError
from biomx.modalities.common.npz import load_npz_splits
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.modalities.image.augment import Augment
from biomx.modalities.image.decode import decode_images, read_image, resize_image
from biomx.modalities.image.sources import records_from_csv, records_from_folder
from data_paths import MEDMNIST, NUCLEI_2D_IMAGE, PNEUMONIAMNIST

NUCLEI = NUCLEI_2D_IMAGE
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
CT = get_testdata_file("CT_small.dcm")  # CT, RescaleIntercept -1024, no window
MR = get_testdata_file("MR_small.dcm")  # MR with WindowCenter 600 / WindowWidth 1600
RTDOSE = get_testdata_file("rtdose.dcm")  # 15 frames, 10x10, uint32
RGB_2FRAME = get_testdata_file("SC_rgb_rle_2frame.dcm")  # RGB, 2 frames, RLE
# The only MONOCHROME1 files pydicom ships: 16x16 CR images without extension in a DICOMDIR tree.
MONO1 = next(f for f in get_testdata_files() if f.endswith("77654033/CR1/6154"))


@pytest.fixture(scope="module")
def pneumonia() -> np.ndarray:
    with np.load(PNEUMONIAMNIST) as z:
        return z["val_images"][:16]


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    with np.load(MEDMNIST / "retinamnist.npz") as z:
        return z["val_images"][:4]


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


# ---- read_image: PNG / TIFF


def test_png_8bit_is_divided_by_255(tmp_path, pneumonia):
    image = read_image(write_png(tmp_path / "x.png", pneumonia[0]))
    assert image.shape == (1, 28, 28) and image.dtype == np.float32
    np.testing.assert_allclose(image[0], pneumonia[0] / 255, atol=1e-6)


def test_png_16bit_matches_tiff_and_uses_percentile_range(tmp_path):
    raw = tifffile.imread(NUCLEI)
    assert raw.dtype == np.uint16
    png = read_image(write_png(tmp_path / "nuclei16.png", raw))
    tif = read_image(NUCLEI)
    assert png.shape == tif.shape == (1, 512, 512)
    np.testing.assert_array_equal(png, tif)
    lo, hi = np.percentile(raw, (0.5, 99.5))
    np.testing.assert_allclose(tif[0], np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert tif.min() == 0 and tif.max() == 1
    assert 0.003 < (tif == 1).mean() < 0.02  # the brightest ~0.5% saturate, not one pixel


def test_rgb_channels_conversion(tmp_path, retina):
    path = write_png(tmp_path / "rgb.png", retina[0])
    rgb = read_image(path)
    assert rgb.shape == (3, 28, 28)
    np.testing.assert_allclose(rgb, retina[0].transpose(2, 0, 1) / 255, atol=1e-6)
    grey = read_image(path, channels=1)
    expected = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])[None]
    np.testing.assert_allclose(grey, expected, atol=1e-6)
    alpha = np.concatenate([retina[0], np.full((28, 28, 1), 255, np.uint8)], axis=2)
    rgba = write_png(tmp_path / "rgba.png", alpha)
    assert read_image(rgba).shape == (4, 28, 28)
    np.testing.assert_array_equal(read_image(rgba, channels=3), rgb)


def test_grey_to_three_channels(tmp_path, pneumonia):
    image = read_image(write_png(tmp_path / "x.png", pneumonia[1]), channels=3)
    assert image.shape == (3, 28, 28)
    assert np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])


def test_multipage_and_float_tiff(tmp_path):
    raw = tifffile.imread(NUCLEI)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([raw, raw[::-1]]))  # two pages
    np.testing.assert_array_equal(read_image(stack), read_image(NUCLEI))
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, raw.astype(np.float32) * 0.01 - 1)
    image = read_image(floats)
    np.testing.assert_allclose(image[0], (raw - raw.min()) / (raw.max() - raw.min()), atol=1e-5)
    constant = tmp_path / "constant.tif"
    tifffile.imwrite(constant, np.full((8, 8), 7, np.uint16))
    assert np.array_equal(read_image(constant), np.zeros((1, 8, 8), np.float32))


# ---- read_image: DICOM


def test_dicom_ct_rescale_and_window():
    ds = pydicom.dcmread(CT)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    image = read_image(CT)  # no window in the file: min-max of the HU values
    assert image.shape == (1, 128, 128) and image.min() == 0 and image.max() == 1
    assert image.std() > 0.05
    np.testing.assert_allclose(image[0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-5)
    soft = read_image(CT, window=(40, 400))  # soft-tissue window in HU, DICOM LINEAR: [-160, 239]
    np.testing.assert_allclose(soft[0], np.clip((hu - 39.5) / 399 + 0.5, 0, 1), atol=1e-5)
    assert 0 < soft.mean() < 1 and not np.array_equal(soft, image)


def test_dicom_file_window_is_used():
    raw = pydicom.dcmread(MR).pixel_array.astype(np.float64)
    image = read_image(MR)  # WindowCenter 600, WindowWidth 1600, DICOM LINEAR (PS3.3 C.11.2.1.2.1)
    np.testing.assert_allclose(image[0], np.clip((raw - 599.5) / 1599 + 0.5, 0, 1), atol=1e-5)


def test_dicom_monochrome1_is_inverted():
    ds = pydicom.dcmread(MONO1)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = ds.pixel_array.astype(np.float64)
    naive = (raw - raw.min()) / (raw.max() - raw.min())
    image = read_image(MONO1)  # no extension: detected by the DICM magic
    assert image.shape == (1, 16, 16) and 0 <= image.min() and image.max() <= 1
    assert np.corrcoef(image.ravel(), naive.ravel())[0, 1] < -0.99


def test_dicom_multiframe_first_vs_all():
    frames = pydicom.dcmread(RTDOSE).pixel_array.astype(np.float64)
    assert frames.shape == (15, 10, 10)
    first = read_image(RTDOSE)
    every = read_image(RTDOSE, dicom_frames="all")
    assert first.shape == (1, 10, 10) and every.shape == (15, 10, 10)
    f0 = frames[0]
    np.testing.assert_allclose(first[0], (f0 - f0.min()) / (f0.max() - f0.min()), atol=1e-5)
    # "all" scales the frames jointly, so they stay comparable
    np.testing.assert_allclose(every, (frames - frames.min()) / np.ptp(frames), atol=1e-5)
    with pytest.raises(DataError, match="15 channels"):
        read_image(RTDOSE, dicom_frames="all", channels=1)


def test_dicom_rgb_multiframe():
    frames = pydicom.dcmread(RGB_2FRAME).pixel_array  # (2, 100, 100, 3) uint8
    first = read_image(RGB_2FRAME)
    every = read_image(RGB_2FRAME, dicom_frames="all")
    assert first.shape == (3, 100, 100) and every.shape == (6, 100, 100)
    np.testing.assert_allclose(every[3:], frames[1].transpose(2, 0, 1) / 255, atol=1e-6)
    assert read_image(RGB_2FRAME, channels=1).shape == (1, 100, 100)


# ---- read_image: NIfTI


def test_nifti_slice():
    path = NIBABEL_DATA / "anatomical.nii"
    volume = np.asarray(nib.load(path).dataobj).astype(np.float64)
    assert volume.shape == (33, 41, 25)
    middle = read_image(path)
    plane = volume[:, :, 12]
    assert middle.shape == (1, 33, 41)
    np.testing.assert_allclose(middle[0], (plane - plane.min()) / np.ptp(plane), atol=1e-5)
    assert not np.array_equal(read_image(path, nifti_slice=3), middle)
    with pytest.raises(DataError, match="nifti_slice=25 is out of range"):
        read_image(path, nifti_slice=25)


def test_nifti_4d_uses_first_volume():
    path = NIBABEL_DATA / "example4d.nii.gz"
    series = nib.load(path)
    assert series.shape == (128, 96, 24, 2)
    image = read_image(path, nifti_slice=10)
    plane = np.asarray(series.dataobj[:, :, 10, 0]).astype(np.float64)
    assert image.shape == (1, 128, 96)
    np.testing.assert_allclose(image[0], (plane - plane.min()) / np.ptp(plane), atol=1e-5)


# ---- read_image: bad files


def test_bad_files_raise_data_error_naming_the_path(tmp_path, pneumonia):
    good = write_png(tmp_path / "good.png", pneumonia[0]).read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    text_png = tmp_path / "notes.png"
    text_png.write_text("this is not an image\n")
    text_dcm = tmp_path / "notes.dcm"
    text_dcm.write_text("this is not a DICOM file\n")
    unknown = tmp_path / "notes.txt"
    unknown.write_text("plain text\n")
    dicom_truncated = get_testdata_file("MR_truncated.dcm")  # real truncated pixel data
    for path in (truncated, text_png, text_dcm, unknown, dicom_truncated, tmp_path / "gone.png"):
        with pytest.raises(DataError) as info:
            read_image(path)
        message = str(info.value)
        assert message.startswith(f"{path}: cannot read image: ") and "\n" not in message


# ---- resize_image


def test_resize_image():
    image = read_image(NUCLEI)
    small = resize_image(image, (64, 48))
    assert small.shape == (1, 64, 48) and small.dtype == torch.float32
    assert 0 <= small.min() and small.max() <= 1
    # antialiased 8x downscale ~ the 8x8 block average (plain bilinear samples 2 of 64 pixels:
    # mean error 0.017 on this image)
    square = resize_image(image, (64, 64))
    box = torch.nn.functional.avg_pool2d(torch.from_numpy(image)[None], 8)[0]
    assert (square - box).abs().mean() < 0.01
    big = resize_image(torch.from_numpy(image[:, :32, :32]), (100, 100))
    assert big.shape == (1, 100, 100)
    assert resize_image(image, (512, 512)).shape == (1, 512, 512)


# ---- sources


def make_tree(root: Path, pneumonia: np.ndarray) -> None:
    for label, images in (("normal", pneumonia[:3]), ("pneumonia", pneumonia[3:5])):
        (root / label / "nested").mkdir(parents=True)
        for i, array in enumerate(images):
            write_png(root / label / ("nested" if i == 0 else "") / f"{i}.png", array)
    (root / "normal" / ".hidden.png").write_bytes(b"")
    (root / "normal" / "readme.txt").write_text("notes")
    (root / ".cache").mkdir()
    shutil.copy(MONO1, root / "pneumonia" / "1.2.840.113619")  # DICOM named by its UID


def test_records_from_folder(tmp_path, pneumonia):
    make_tree(tmp_path, pneumonia)
    records = records_from_folder(tmp_path)
    assert len(records) == 6
    assert records.labels == ["normal"] * 3 + ["pneumonia"] * 3
    assert records.groups == [None] * 6
    assert {p.name for p in records.paths} == {"0.png", "1.png", "2.png", "1.2.840.113619"}
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match=f"{tmp_path / 'empty_class'}: class folder has no image"):
        records_from_folder(tmp_path)


def test_records_from_empty_folder(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}: no class folders"):
        records_from_folder(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        records_from_folder(tmp_path / "missing")


def test_records_from_csv(tmp_path):
    manifest = tmp_path / "labels.csv"
    manifest.write_text(
        "path,label,patient_id\n"
        "images/a.png,normal,P1\n"
        f"{tmp_path / 'b.png'},pneumonia,\n"
        "images/c.png, normal ,P2\n"
    )
    records = records_from_csv(manifest)
    assert records.paths == [tmp_path / "images/a.png", tmp_path / "b.png", tmp_path / "images/c.png"]
    assert records.labels == ["normal", "pneumonia", "normal"]
    assert records.groups == ["P1", None, "P2"]
    other = records_from_csv(manifest, root=tmp_path / "elsewhere", group_column=None)
    assert other.paths[0] == tmp_path / "elsewhere" / "images/a.png"
    assert other.groups == [None] * 3


def test_records_from_csv_multilabel_and_custom_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,findings\nx.dcm,effusion|nodule\ny.dcm,nodule\n")
    records = records_from_csv(manifest, path_column="file", label_column="findings")
    assert records.labels == [["effusion", "nodule"], ["nodule"]]
    assert records.groups == [None, None]  # no patient_id column


def test_records_from_csv_errors(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("path,diagnosis\na.png,x\n")
    with pytest.raises(DataError) as info:
        records_from_csv(manifest)
    message = str(info.value)
    assert str(manifest) in message and "'label'" in message and "path, diagnosis" in message
    manifest.write_text("path,label\na.png,x\nb.png,\nc.png,y\n")
    with pytest.raises(DataError, match=f"{manifest}: row 3: empty 'label'"):
        records_from_csv(manifest)
    manifest.write_text("path,label\na.png,x\nb.png,y\n,z\n")
    with pytest.raises(DataError, match="row 4: empty 'path'"):
        records_from_csv(manifest)
    with pytest.raises(DataError, match="cannot read CSV"):
        records_from_csv(tmp_path / "missing.csv")


def test_load_npz_grey_and_rgb():
    splits = load_npz_splits(PNEUMONIAMNIST)
    assert set(splits) == {"train", "val"}
    images, labels = splits["train"]
    assert images.shape == (4708, 1, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (4708,) and labels.dtype == np.int64 and set(labels) == {0, 1}
    rgb, grades = load_npz_splits(MEDMNIST / "retinamnist.npz")["val"]
    assert rgb.shape == (120, 3, 28, 28) and rgb.flags.c_contiguous and grades.shape == (120,)
    with np.load(MEDMNIST / "retinamnist.npz") as z:
        np.testing.assert_array_equal(rgb[5], z["val_images"][5].transpose(2, 0, 1))


def test_load_npz_errors(tmp_path):
    with np.load(PNEUMONIAMNIST) as z:
        images, labels = z["val_images"][:10], z["val_labels"][:10]
    partial = tmp_path / "partial.npz"
    np.savez(partial, train_images=images, train_labels=labels, val_images=images)
    with pytest.raises(DataError, match="missing array 'val_labels'"):
        load_npz_splits(partial)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((MEDMNIST / "breastmnist.npz").read_bytes()[:5000])
    with pytest.raises(DataError, match=f"{truncated}: cannot read npz"):
        load_npz_splits(truncated)
    volumes = tmp_path / "volumes.npz"
    np.savez(volumes, train_images=np.zeros((2, 8, 8, 8), np.uint8), train_labels=labels[:2],
             val_images=np.zeros((2, 8, 8, 8), np.uint8), val_labels=labels[:2])
    with pytest.raises(DataError, match="expected 2D images"):
        load_npz_splits(volumes)


# ---- decode_images


def test_decode_images_skip_and_raise(tmp_path, pneumonia, retina):
    paths = [write_png(tmp_path / f"{i}.png", pneumonia[i]) for i in range(3)]
    paths.insert(1, tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    paths.append(tmp_path / "text.png")
    paths.append(write_png(tmp_path / "rgb.png", retina[0]))
    images, kept, failures = decode_images(paths, size=(32, 32), channels=1, on_error="skip")
    assert images.shape == (4, 1, 32, 32) and images.dtype == torch.float16
    assert kept == [0, 2, 3, 5]
    assert [f[0] for f in failures] == [str(paths[1]), str(paths[4])]
    assert all(reason.startswith("cannot read image") for _, reason in failures)
    assert 0 <= images.min() and images.max() <= 1
    serial, _, _ = decode_images(paths, size=(32, 32), channels=1, on_error="skip", workers=1)
    assert torch.equal(images, serial)
    expected = resize_image(read_image(paths[2]), (32, 32)).half()
    assert torch.equal(images[1], expected)
    with pytest.raises(DataError, match="missing.png"):
        decode_images(paths, size=(32, 32), channels=1, workers=2)


# ---- dataset, augmentation, loader

FULL = Augment(hflip=0.5, vflip=0.5, rotate=15, scale=(0.9, 1.1), translate=0.1,
               brightness=0.2, contrast=0.2, gamma=0.2, noise=0.02)


@pytest.fixture(scope="module")
def dataset_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(PNEUMONIAMNIST) as z:
        return torch.from_numpy(z["val_images"][:64, None]), torch.from_numpy(z["val_labels"][:64, 0])


def test_getitems_is_deterministic_per_epoch(dataset_arrays):
    images, labels = dataset_arrays
    ds = ImageTensorDataset(images, labels, augment=FULL, seed=3)
    indices = [5, 1, 9, 30]
    a, ya = ds.__getitems__(indices)
    b, _ = ImageTensorDataset(images, labels, augment=FULL, seed=3).__getitems__(indices)
    assert torch.equal(a, b)
    assert torch.equal(ya, labels[indices])
    ds.set_epoch(1)
    c, _ = ds.__getitems__(indices)
    assert not torch.equal(a, c)
    ds.set_epoch(0)
    assert torch.equal(ds.__getitems__(indices)[0], a)  # resume at epoch 0: same batch


def test_augment_keeps_shape_and_range(dataset_arrays):
    images, labels = dataset_arrays
    plain = ImageTensorDataset(images, labels)
    x, _ = plain.__getitems__(list(range(16)))
    assert x.dtype == torch.float32 and x.shape == (16, 1, 28, 28)
    assert torch.allclose(x, images[:16].float() / 255)
    y = FULL(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert (y - x).abs().mean() > 0.01
    flipped = Augment(hflip=1.0)(x, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, x.flip(-1))
    # with an affine, the flips ride along in the same resampling: still an exact mirror
    folded = Augment(hflip=1.0, vflip=1.0, translate=1e-9)(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(folded, x.flip(-1, -2), atol=1e-5, rtol=0)
    assert torch.equal(Augment()(x, torch.Generator()), x)
    rgb = torch.rand(4, 3, 20, 36, generator=torch.Generator().manual_seed(1))
    assert FULL(rgb, torch.Generator().manual_seed(2)).shape == (4, 3, 20, 36)


def test_normalize_and_getitem(dataset_arrays):
    images, labels = dataset_arrays
    ds = ImageTensorDataset(images.half() / 255, labels, normalize=(0.5, 0.25))
    x, y = ds[7]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == labels[7]
    torch.testing.assert_close(x, (images[7].float() / 255 - 0.5) / 0.25, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="normalize"):
        ImageTensorDataset(images, labels, normalize=([0.5, 0.5], [0.2, 0.2]))


def test_dataloader_batches(dataset_arrays):
    images, labels = dataset_arrays
    ds = ImageTensorDataset(images, labels, augment=FULL)
    batches = list(DataLoader(ds, batch_size=8, collate_fn=collate_batch))
    assert len(batches) == 8
    for x, y in batches:
        assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (8,)
    # same batches with worker processes: the seed depends only on the indices and epoch
    workers = list(DataLoader(ds, batch_size=8, collate_fn=collate_batch, num_workers=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, workers, strict=True))


def test_collate_batch_falls_back_to_default():
    samples = [(torch.zeros(2, 4, 4), torch.tensor(1)), (torch.ones(2, 4, 4), torch.tensor(0))]
    x, y = collate_batch(samples)
    assert x.shape == (2, 2, 4, 4) and y.tolist() == [1, 0]
    stacked = (torch.zeros(3, 1, 4, 4), torch.zeros(3))
    assert collate_batch(stacked) is stacked
