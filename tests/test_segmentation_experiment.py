"""Segmentation end to end: MSD folders of real files (2D nuclei TIFF tiles from real microscopy,
synthetic 3D lesion CT volumes as NIfTI) -> preprocessed cases in the shared cache -> patch
training -> whole-case sliding-window test evaluation (Dice, HD95, surface Dice with CIs),
masks written back on the scans' own grids -> `biomx predict` on new scans; bad input fails
with one line naming the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from biomx.cli import main
from biomx.config import load_config
from biomx.experiment import prepare
from biomx.modalities.image.starter_data import write_nuclei_dataset
from biomx.modalities.volume.lesions import write_lesion_dataset
from biomx.predict import predict_files


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    return write_nuclei_dataset(tmp_path_factory.mktemp("nuclei"), tile=128).parent


@pytest.fixture(scope="module")
def lesions(tmp_path_factory) -> Path:
    return write_lesion_dataset(tmp_path_factory.mktemp("lesions"), n_cases=8, seed=3).parent


def _config(tmp_path: Path, name: str, data: str, model: str, extra: str = "",
            task: str = "{kind: segmentation}") -> Path:  # fmt: skip
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: msd, {data}}}\n"
        f"task: {task}\n"
        f"model: {model}\n"
        "train: {epochs: 1, batch_size: 4, progress: false, monitor: val_dice}\n"
        "eval: {bootstrap: 50, explain: 3}\n"
        f"{extra}"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    return cfg


PATCH_3D = "{kind: segmentation, patch_size: [16, 16, 16]}"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_nuclei_2d_train_evaluate_and_predict(nuclei, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    cfg = _config(
        tmp_path, "nuc",
        f"modality: image, path: {nuclei}, split: {{method: random, val: 0.125, test: 0.125}},"
        " image: {scan: {intensity: minmax, augment: {flip: 0.5, rotate90: 0.5}}}",
        "{name: unet, args: {channels: [8, 16, 32], strides: [2, 2], num_res_units: 1}}",
        task="{kind: segmentation, min_component_size: 20, patch_size: [64, 64], patches_per_case: 4}",
    )  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "nuc"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["kind"] == "segmentation" and metrics["n"] == 2
    assert 0.0 <= metrics["metrics"]["dice"]["value"] <= 1.0
    assert set(metrics["per_class"]) == {"nucleus"} and metrics["min_component_size"] == 20
    rows = _rows(run / "predictions_test.csv")
    assert len(rows) == 2
    for row in rows:  # every test mask is on its tile's own grid, without blobs under 20 pixels
        mask = tifffile.imread(row["mask"])
        assert mask.shape == (128, 128) and set(np.unique(mask)) <= {0, 1}
        assert _smallest_blob(mask) >= 20
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "val_dice" in history[-1]
    report = (run / "report.html").read_text()
    assert "Segmentation overlays" in report and "dice" in report

    tile = sorted((nuclei / "imagesTr").glob("*.tif"))[0]
    columns = predict_files(run, [tile], tmp_path / "pred.csv")
    assert columns["path"] == [str(tile)]
    written = tifffile.imread(columns["mask"][0])
    assert written.shape == tifffile.imread(tile).shape[-2:]
    assert Path(columns["mask"][0]).parent == tmp_path / "pred_masks"
    assert int(columns["nucleus_pixels"][0]) == int((written == 1).sum())
    assert _smallest_blob(written) >= 20  # predict post-processes as the test evaluation did


def _smallest_blob(mask: np.ndarray) -> float:
    """Pixels in the smallest 8-connected foreground blob (inf when there is none)."""
    from scipy import ndimage

    blobs, n = ndimage.label(mask > 0, structure=np.ones((3, 3)))
    return float(np.bincount(blobs.ravel())[1:].min()) if n else float("inf")


def test_lesions_3d_masks_overlay_the_original_scan(lesions, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    cfg = _config(
        tmp_path, "les",
        f"modality: volume, path: {lesions}, split: {{method: random, val: 0.25, test: 0.25}},"
        " volume: {spacing: [2.0, 2.0, 3.0], intensity: ct, ct_window: [-200, 200]}",
        "{name: unet, args: {channels: [8, 16], strides: [2], num_res_units: 0}}",
        task="{kind: segmentation, patch_size: [16, 16, 16], patches_per_case: 2, sw_batch_size: 2}",
    )  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "les"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n"] == 2 and set(metrics["metrics"]) >= {"dice", "hd95", "surface_dice"}
    for row in _rows(run / "predictions_test.csv"):
        image = nib.load(lesions / "imagesTr" / f"{row['id']}.nii.gz")
        mask = nib.load(row["mask"])
        assert mask.shape == image.shape  # same voxel order as the scan, whatever its orientation
        np.testing.assert_allclose(mask.affine, image.affine, atol=1e-5)

    # Predict on scans stored in a non-canonical orientation: the mask follows the file's own.
    scans = sorted((lesions / "imagesTr").glob("*.nii.gz"))
    flipped = [p for p in scans if nib.aff2axcodes(nib.load(p).affine) != ("R", "A", "S")]
    assert flipped, "the synthetic set should hold non-RAS scans"
    assert main(["predict", str(run), str(flipped[0]), "-o", str(tmp_path / "p.csv")]) == 0
    row = _rows(tmp_path / "p.csv")[0]
    mask = nib.load(row["mask"])
    np.testing.assert_allclose(mask.affine, nib.load(flipped[0]).affine, atol=1e-5)
    assert mask.shape == nib.load(flipped[0]).shape
    assert float(row["lesion_volume_ml"]) >= 0.0


def test_cache_is_reused_and_keyed_by_settings(lesions, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, "c", f"modality: volume, path: {lesions}", "{name: unet, args: {channels: [8, 16], strides: [2]}}",
                  task=PATCH_3D)  # fmt: skip
    first = prepare(load_config(cfg))
    entries = sorted(p.name for p in (tmp_path / "cache").glob("*/*"))
    assert len(entries) == 8
    again = prepare(load_config(cfg))
    assert [c.key for c in again.data.inputs.cases] == [c.key for c in first.data.inputs.cases]
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/*")) == entries  # nothing recomputed
    changed = prepare(load_config(cfg, ["data.volume.intensity=ct"]))
    assert not {c.key for c in changed.data.inputs.cases} & set(entries)
    x, y = first.datasets["train"].__getitems__([0, 1, 2])
    assert x.shape == (3, 1, 16, 16, 16) and y.shape == (3, 16, 16, 16)


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_cases_fail_with_one_line_or_are_skipped(lesions, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    data = _copy_dataset(lesions, tmp_path / "bad")
    label = sorted((data / "labelsTr").glob("*.nii.gz"))[0]
    img = nib.load(label)
    affine = img.affine.copy()
    affine[:3, 3] += 5.0  # the mask sits 5 mm off the image
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), label)
    scan = sorted((data / "imagesTr").glob("*.nii.gz"))[1]
    scan.write_bytes(scan.read_bytes()[:500])  # truncated
    cfg = _config(tmp_path, "bad", f"modality: volume, path: {data}", "{name: unet, args: {channels: [8, 16], strides: [2]}}",
                  task=PATCH_3D)  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("labelsTr" in err[0] or "imagesTr" in err[0])
    assert "Traceback" not in err[0]
    p = prepare(load_config(cfg, ["data.on_error=skip"]))
    assert len(p.data.ids) == 6 and len(p.data.skipped) == 2
    reasons = " ".join(r for _, r in p.data.skipped)
    assert "affine" in reasons or "mm" in reasons


def test_config_mistakes_are_one_line(nuclei, tmp_path, capsys):
    cfg = _config(tmp_path, "m", f"modality: volume, path: {nuclei}", "{name: unet}",
                  task="{kind: segmentation, patch_size: [64, 64]}")  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    assert "use modality: image" in capsys.readouterr().err
    cfg = _config(tmp_path, "p", f"modality: image, path: {nuclei}", "{name: unet}",
                  task="{kind: segmentation, patch_size: [60, 60]}")  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    assert "task.patch_size:" in (err := capsys.readouterr().err) and "divisible by 16" in err
    cfg = _config(tmp_path, "old", f"modality: image, path: {nuclei}, volume: {{intensity: minmax}}", "{name: unet}",
                  task="{kind: segmentation, patch_size: [64, 64]}")  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    assert "data.volume: unknown key; it is data.image.scan now" in capsys.readouterr().err


def test_nan_voxels_are_refused_or_zeroed_when_asked(lesions, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    data = _copy_dataset(lesions, tmp_path / "nan")
    scan = sorted((data / "imagesTr").glob("*.nii.gz"))[2]
    img = nib.load(scan)
    voxels = np.asarray(img.dataobj, dtype=np.float32)
    voxels[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, img.affine), scan)
    cfg = _config(tmp_path, "nan", f"modality: volume, path: {data}", "{name: unet, args: {channels: [8, 16], strides: [2]}}",
                  task=PATCH_3D)  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert scan.name in err and "NaN" in err
    p = prepare(load_config(cfg, ["data.volume.nan_policy=zero"]))
    assert len(p.data.ids) == 8
    x, _ = p.datasets["train"].__getitems__(list(range(len(p.datasets["train"]))))
    assert bool(x.isfinite().all())


def test_size_limits_apply_to_training_and_to_the_runs_predict(lesions, nuclei, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, "big", f"modality: volume, path: {lesions}, volume: {{max_voxels: 1000}}",
                  "{name: unet, args: {channels: [8, 16], strides: [2]}}", task=PATCH_3D)  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lesion_" in err[0] and "data.volume.max_voxels (1,000)" in err[0], err
    cfg = _config(tmp_path, "tiles", f"modality: image, path: {nuclei}, image: {{max_pixels: 10000}}",
                  "{name: unet, args: {channels: [8, 16], strides: [2]}}",
                  task="{kind: segmentation, patch_size: [64, 64]}")  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "128 x 128 image (16,384 pixels), more than data.image.max_pixels" in err[0], err

    cfg = _config(tmp_path, "ok", f"modality: image, path: {nuclei}, image: {{max_pixels: 20000}}",
                  "{name: unet, args: {channels: [8, 16], strides: [2]}}",
                  task="{kind: segmentation, patch_size: [64, 64]}")  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "ok"
    assert json.loads((run / "run.json").read_text())["preprocessing"]["limits"] == {"max_pixels": 20000}
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.zeros((160, 160), np.uint16))  # 25,600 pixels: over the run's limit
    capsys.readouterr()
    assert main(["predict", str(run), str(big), "-o", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "big.tif" in err[0] and "data.image.max_pixels (20,000)" in err[0], err
