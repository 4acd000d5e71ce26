"""`biomx drift`: a tiny chest X-ray run against held-out X-rays of the same distribution (no
drift), the same X-rays with their contrast changed (drift), and another MedMNIST set; the MMD
test on Gaussians; bad inputs as one line."""

from __future__ import annotations

import json
import time
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


def _served_log(run: Path, folder: Path, log: Path) -> None:
    """Upload every PNG of `folder` (20 per request) to a server that writes a drift log."""
    from fastapi.testclient import TestClient

    from biomx.serve.app import create_app

    files = sorted(folder.glob("*.png"))
    with TestClient(create_app([str(run)], max_batch=32, threads=1, drift_log=log)) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.05)
        for start in range(0, len(files), 20):
            batch = [("files", (p.name, p.read_bytes(), "image/png")) for p in files[start:start + 20]]
            answer = client.post(f"/models/{run.name}/predict", files=batch, data={"explain": "0"})
            assert answer.status_code == 200, answer.text


def test_server_drift_log(drift_data, tmp_path):
    same_log, shifted_log = tmp_path / "same.jsonl", tmp_path / "shifted.jsonl"
    _served_log(drift_data["run"], drift_data["same"], same_log)
    _served_log(drift_data["run"], drift_data["contrast"], shifted_log)
    lines = [json.loads(line) for line in same_log.read_text().splitlines()]
    assert sum(entry["rows"] for entry in lines) == 200 and "mean intensity" in lines[0]["statistics"]
    same = compare(drift_data["run"], [], from_log=same_log, permutations=PERMUTATIONS)
    assert not same["drift"] and "model embedding" not in _by_name(same) and same["new"]["rows"] == 200
    shifted = compare(drift_data["run"], [], from_log=shifted_log, permutations=PERMUTATIONS)
    assert shifted["drift"] and _by_name(shifted)["mean intensity"]["p_value"] < 0.01
    assert main(["drift", str(drift_data["run"]), "--from-log", str(tmp_path / "none.jsonl")]) == 1


def test_table_column_shift(tmp_path):
    """A tabular run: the same tumours (no drift) and with one column rescaled (drift in it)."""
    import csv

    import yaml

    assert main(["datasets", "--name", "breast_cancer", "--export", str(tmp_path)]) == 0
    table = tmp_path / "breast_cancer.csv"
    cfg = yaml.safe_load((Path(__file__).parent.parent / "examples" / "breast_cancer_tabular.yaml").read_text())
    cfg["data"]["path"] = str(table)
    cfg["data"]["tabular"]["baseline"] = False
    cfg["model"]["args"] = {"width": 16, "depth": 1}
    cfg["train"].update(epochs=1, progress=False)
    cfg["eval"] = {"bootstrap": 0, "explain": 0}
    cfg["output"] = {"dir": str(tmp_path / "runs"), "name": "table", "tensorboard": False}
    (tmp_path / "table.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "table.yaml")]) == 0
    rows = list(csv.DictReader(table.open()))
    column = next(k for k in rows[0] if k not in ("id", "diagnosis"))
    shifted = tmp_path / "shifted.csv"
    with shifted.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, column: str(float(r[column]) * 1.5)} for r in rows)
    run = tmp_path / "runs" / "table"
    same = compare(run, [table], permutations=PERMUTATIONS)
    assert not same["drift"], same["verdict"]
    tests = _by_name(compare(run, [shifted], permutations=PERMUTATIONS))
    assert tests[column]["p_value"] < 0.01 and tests[column]["drift"]
    others = [t for name, t in tests.items() if t["kind"] == "input" and name != column]
    assert len(others) == 29 and not any(t["drift"] for t in others)


def test_sequence_statistics():
    """Length without padding; ambiguity codes spread over their letters; GC share."""
    from biomx.modalities.sequence import input_statistics
    from biomx.modalities.sequence.encoding import encode

    tokens, _ = encode(["ACGTNN", "GGGCC"], "dna", length=8)
    stats = input_statistics({"alphabet": "dna"}, tokens)
    assert stats["length"].tolist() == [6, 5]
    assert stats["A share"].tolist() == pytest.approx([0.25, 0.0])
    assert stats["GC share"].tolist() == pytest.approx([0.5, 1.0])
