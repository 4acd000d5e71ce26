"""`biomx drift`: a tiny chest X-ray run against held-out X-rays of the same distribution (no
drift), the same X-rays with their contrast changed (drift), and another MedMNIST set; the MMD
test on Gaussians; bad inputs as one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomx.cli import main
from biomx.datasets import get_dataset
from biomx.drift.run import compare
from biomx.drift.stats import holm, mmd_test
from data_paths import MEDMNIST
from servers import train_image_run

pytestmark = pytest.mark.usefixtures("one_thread")
PERMUTATIONS = 200  # smallest p = 1/201


def _write(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(x).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def drift_data(tmp_path_factory, png_folder) -> dict[str, Path]:
    """A run trained on the first 160 validation X-rays; 200 other validation X-rays as PNG, as
    they are and with a linear contrast change (0.6 x + 50); BreastMNIST ultrasound images."""
    root = tmp_path_factory.mktemp("drift")
    run = train_image_run(root, png_folder, "drift")
    with np.load(get_dataset("pneumoniamnist").path) as arrays:
        held_out = arrays["val_images"][300:500]
    contrast = np.clip(0.6 * held_out.astype(np.float64) + 50, 0, 255).round().astype(np.uint8)
    with np.load(MEDMNIST / "breastmnist.npz") as arrays:
        breast = np.concatenate([arrays["train_images"], arrays["val_images"]])
    return {"run": run, "same": _write(root / "same", held_out), "contrast": _write(root / "contrast", contrast),
            "breast": _write(root / "breast", breast)}  # fmt: skip


def _by_name(result: dict) -> dict[str, dict]:
    return {t["name"]: t for t in result["tests"]}


def test_same_distribution_is_no_drift(drift_data):
    result = compare(drift_data["run"], [drift_data["same"]], seed=0, permutations=PERMUTATIONS)
    tests = _by_name(result)
    assert tests["model embedding"]["p_value"] > 0.05
    assert tests["mean intensity"]["p_value"] > 0.05
    assert all(t["p_adjusted"] > 0.05 for t in result["tests"]), result["tests"]
    assert result["verdict"] == "no drift detected" and not result["drift"]
    assert result["new"]["rows"] == 200 and result["reference"]["rows"] == result["reference"]["of"]


def test_contrast_change_is_drift(drift_data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["drift", str(drift_data["run"]), str(drift_data["contrast"]), "--out", str(out),
                 "--permutations", str(PERMUTATIONS)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "drift: " in printed and "DRIFT" in printed
    result = json.loads((out / "drift.json").read_text())
    tests = _by_name(result)
    assert tests["model embedding"]["p_value"] < 0.01
    assert tests["mean intensity"]["p_value"] < 0.01 and tests["intensity SD"]["p_value"] < 0.01
    assert result["drift"] and result["verdict"].startswith("drift: ")
    assert "| embedding | model embedding |" in (out / "drift.md").read_text()
    failing = main(["drift", str(drift_data["run"]), str(drift_data["contrast"]), "--out", str(out),
                    "--permutations", str(PERMUTATIONS), "--fail-on-drift"])  # fmt: skip
    assert failing == 1
    assert "drift --fail-on-drift: drift: " in capsys.readouterr().err


def test_other_medmnist_set_is_drift(drift_data):
    result = compare(drift_data["run"], [drift_data["breast"]], seed=0, permutations=PERMUTATIONS)
    assert _by_name(result)["model embedding"]["p_value"] < 0.01
    assert result["drift"]


def test_mmd_on_gaussians():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 5)), rng.normal(size=(100, 5))
    same = mmd_test(x, y, permutations=PERMUTATIONS, seed=1)
    shifted = mmd_test(x, y + 0.5, permutations=PERMUTATIONS, seed=1)
    assert same["p_value"] > 0.05 and abs(same["statistic"]) < 0.02
    assert shifted["p_value"] < 0.01 and shifted["statistic"] > 5 * abs(same["statistic"])
    assert same == mmd_test(x, y, permutations=PERMUTATIONS, seed=1)  # seeded


def test_holm():
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])


def test_bad_inputs_are_one_line(drift_data, tmp_path, capsys):
    assert main(["drift", str(drift_data["run"]), str(tmp_path / "missing.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing.png'}: no such file or folder"]
    assert main(["drift", str(tmp_path), str(drift_data["same"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run" in err[0]
