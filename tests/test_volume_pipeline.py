"""Volume classification end to end on real AdrenalMNIST3D volumes: npz -> run -> predict NIfTI."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from biomx.config import validate
from biomx.errors import BiomxError, ConfigError, DataError
from biomx.experiment import prepare, train
from biomx.modalities import get_modality
from biomx.modalities.common.gradcam import find_last_conv, gradcam
from biomx.modalities.volume.config import VolumeData
from biomx.modalities.volume.pipeline import _cam_layer, load, read_inputs
from biomx.models.registry import build_model
from biomx.predict import predict_files
from biomx.runs import read_json
from data_paths import MEDMNIST


@pytest.fixture(scope="module")
def adrenal(tmp_path_factory) -> Path:
    """60 training and 20 validation volumes (28^3 uint8) of AdrenalMNIST3D, as an npz."""
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:n] for s, n in (("train", 60), ("val", 20)) for k in ("images", "labels")}
    path = tmp_path_factory.mktemp("adrenal") / "adrenal.npz"
    np.savez_compressed(path, **arrays)
    return path


def _config(path: Path, out: Path, **changes) -> dict:
    raw = {
        "name": "adrenal",
        "data": {"source": "npz", "path": str(path), "modality": "volume",
                 "split": {"method": "predefined", "holdout": "val"},
                 "volume": {"augment": {"flip": 0.5, "rotate90": 0.5, "rotate": 10}}},
        "model": {"name": "small_cnn", "args": {"width": 4, "depth": 2}},
        "task": {"type": "binary", "class_weights": "balanced"},
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "device": "cpu", "monitor": "val_auroc"},
        "eval": {"bootstrap": 20, "explain": 4},
        "output": {"dir": str(out), "name": "run", "tensorboard": False},
    }  # fmt: skip
    for key, value in changes.items():
        raw[key] = {**raw[key], **value}
    return raw


@pytest.fixture(scope="module")
def run(adrenal, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return train(validate(_config(adrenal, tmp_path_factory.mktemp("runs"))))


def _nifti(volume: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def test_training_writes_a_run_with_test_metrics_and_3d_gradcam(run):
    info = read_json(run / "run.json")
    assert info["model"]["args"]["spatial_dims"] == 3 and info["model"]["args"]["in_channels"] == 1
    pre = info["preprocessing"]
    assert pre["modality"] == "volume" and pre["shape"] == [28, 28, 28] and pre["intensity"] == "uint8"
    assert 0 < pre["mean"][0] < 0.2 and pre["std"][0] > 0  # sparse shapes: mostly background
    with open(run / "split.csv", newline="") as f:
        splits = [row["split"] for row in csv.DictReader(f)]
    assert splits.count("test") == 20 and splits.count("val") > 0  # official val = our test
    metrics = read_json(run / "test_metrics.json")
    assert metrics["n"] == 20 and 0 <= metrics["metrics"]["auroc"]["value"] <= 1
    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"val:{i}" for i in range(20)]
    report = (run / "report.html").read_text()
    assert report.count("Grad-CAM overlay") >= 2 and "slice " in report and "/28" in report


def test_gradcam_explains_a_layer_that_still_has_a_map():
    """ResNet-18's stride-2 stem leaves 1^3 at its last conv for 28^3 input: use layer2 (4^3)."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28, 28)
    resnet = build_model("resnet18", in_channels=1, out_dim=1, spatial_dims=3, stem="imagenet")
    layer = _cam_layer(resnet, x)
    assert layer is resnet.layer2[1].conv2 and resnet.training  # training flags restored
    heatmap = gradcam(resnet, x, None, layer=layer)
    assert heatmap.shape == (2, 28, 28, 28) and (heatmap.flatten(1).std(1) > 0.01).all()
    small = build_model("small_cnn", in_channels=1, out_dim=1, spatial_dims=3, width=4)
    assert _cam_layer(small, x) is find_last_conv(small)  # 7^3 at its last conv: kept


def test_predict_nifti_matches_the_test_prediction(run, tmp_path):
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:
        volume = a["val_images"][3]
    path = _nifti(volume, tmp_path / "case.nii.gz")
    columns = predict_files(run, [path], tmp_path / "pred.csv")
    assert columns["path"] == [str(path)] and columns["_failures"] == []
    with open(run / "predictions_test.csv", newline="") as f:
        expected = next(r for r in csv.DictReader(f) if r["id"] == "val:3")
    assert float(columns["prob_1"][0]) == pytest.approx(float(expected["prob_1"]), abs=1e-4)
    # the same volume twice the size (each voxel a 2x2x2 block) is averaged back to 28^3
    big = _nifti(volume.repeat(2, 0).repeat(2, 1).repeat(2, 2).astype(np.float32) * 3 - 100, tmp_path / "big.nii")
    again = predict_files(run, [big])
    assert float(again["prob_1"][0]) == pytest.approx(float(expected["prob_1"]), abs=1e-4)


def test_corrupt_nifti_is_one_line_error_or_skipped(run, tmp_path):
    good = _nifti(np.zeros((28, 28, 28), np.uint8), tmp_path / "good.nii.gz")
    real = nib.load(good).to_bytes()
    bad = tmp_path / "bad.nii"
    bad.write_bytes(real[:400])  # truncated after the header
    with pytest.raises(DataError) as info:
        predict_files(run, [good, bad])
    message = str(info.value)
    assert message.startswith(str(bad)) and "\n" not in message
    columns = predict_files(run, [good, bad], skip_errors=True)
    assert columns["path"] == [str(good)]
    assert [f for f, _ in columns["_failures"]] == [str(bad)]


def test_read_inputs_folders_npz_and_channel_checks(run, adrenal, tmp_path):
    pre = read_json(run / "run.json")["preprocessing"]
    folder = tmp_path / "cases"
    folder.mkdir()
    with np.load(adrenal) as a:
        for i in range(2):
            _nifti(a["val_images"][i], folder / f"case{i}.nii.gz")
    (folder / "notes.txt").write_text("not a volume")
    x, names, failures = read_inputs(pre, [folder, adrenal])
    assert x.shape == (2 + 80, 1, 28, 28, 28) and failures == []
    assert names[:3] == [str(folder / "case0.nii.gz"), str(folder / "case1.nii.gz"), f"{adrenal}:train:0"]
    assert names.index(f"{adrenal}:val:1") == 2 + 61
    assert torch.allclose(x[1], x[2 + 61], atol=1e-5)  # NIfTI min-max = uint8 / 255, same normalisation
    two = _nifti(np.zeros((28, 28, 28, 2), np.float32), tmp_path / "two.nii.gz")
    with pytest.raises(DataError, match="2 channels, the model takes 1"):
        read_inputs(pre, [two])
    with pytest.raises(DataError, match="raw float intensities"):
        read_inputs({**pre, "intensity": "float"}, [folder])


def test_datasets_keep_uint8_and_augment_only_training(adrenal, tmp_path):
    p = prepare(validate(_config(adrenal, tmp_path)))
    assert p.data.inputs.dtype == torch.uint8 and p.data.inputs.shape == (80, 1, 28, 28, 28)
    train_set, test_set = p.datasets["train"], p.datasets["test"]
    assert train_set.images is test_set.images  # shared, not copied per split
    a, _ = train_set.__getitems__([0, 1, 2, 3])
    b, _ = train_set.__getitems__([0, 1, 2, 3])
    train_set.set_epoch(1)
    c, _ = train_set.__getitems__([0, 1, 2, 3])
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    x, y = test_set.__getitems__([0, 1])
    pre = p.info["preprocessing"]
    raw = p.data.inputs[torch.as_tensor(p.splits["test"][:2])].float() / 255
    assert torch.allclose(x, (raw - pre["mean"][0]) / pre["std"][0])
    assert torch.equal(y, p.targets[torch.as_tensor(p.splits["test"][:2])])


def test_bad_sources_and_settings_are_one_line_errors(adrenal, tmp_path):
    flat = tmp_path / "flat.npz"
    np.savez(flat, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.zeros((4, 1), np.uint8),
             val_images=np.zeros((2, 28, 28), np.uint8), val_labels=np.zeros((2, 1), np.uint8))  # fmt: skip
    with pytest.raises(DataError, match=r"train_images has shape \(4, 28, 28\); expected volumes"):
        load(VolumeData(source="npz", path=str(flat)))
    nan = tmp_path / "nan.npz"
    volumes = np.zeros((3, 8, 8, 8), np.float32)
    volumes[2, 1, 1, 1] = np.nan
    np.savez(nan, train_images=volumes, train_labels=np.zeros(3, np.int64), val_images=volumes[:1],
             val_labels=np.zeros(1, np.int64))  # fmt: skip
    with pytest.raises(DataError, match="train_images row 2 has NaN"):
        load(VolumeData(source="npz", path=str(nan)))
    # 2D image settings on volume data are refused by the schema, naming the key and its place
    with pytest.raises(ConfigError, match=r"^data.image: unknown key; it belongs to data.modality: image"):
        validate(_config(adrenal, tmp_path, data={"image": {"size": [28, 28]}}))
    with pytest.raises(ConfigError, match=r"^data.image_size: unknown key"):
        validate(_config(adrenal, tmp_path, data={"image_size": [28, 28]}))
    with pytest.raises(ConfigError, match=r"^data.augment: unknown key; it is data.volume.augment now"):
        validate(_config(adrenal, tmp_path, data={"augment": {"hflip": 0.5}}))
    with pytest.raises(ConfigError, match=r"^data.volume.augment.hflip: unknown key; did you mean 'flip'\?"):
        validate(_config(adrenal, tmp_path, data={"volume": {"augment": {"hflip": 0.5}}}))
    with pytest.raises(ConfigError, match="msd"):
        load(VolumeData(source="msd", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="model.name: deepsea serves sequence data, not volume"):
        prepare(validate(_config(adrenal, tmp_path, model={"name": "deepsea", "args": {}})))
    assert get_modality("volume").__name__ == "biomx.modalities.volume"
    assert issubclass(DataError, BiomxError)
