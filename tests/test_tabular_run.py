"""The tabular modality end to end through the command line, on scikit-learn's breast cancer
table as `biomx datasets` exports it: train (a tiny MLP, a few epochs), the LightGBM baseline
and the attributions in the report, and `biomx predict` applying the run's own encoding."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from biomx.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).parent.parent / "examples" / "breast_cancer_tabular.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bc")
    assert main(["datasets", "--name", "breast_cancer", "--export", str(root)]) == 0
    return root / "breast_cancer.csv"


def _train(root: Path, table: Path, model: str, args: dict, epochs: int) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["data"]["path"] = str(table)
    cfg["model"] = {"name": model, "args": args}
    cfg["train"].update(epochs=epochs, progress=False)
    cfg["eval"] = {"bootstrap": 20, "explain": 3}
    cfg["output"] = {"dir": str(root / "runs"), "name": model, "tensorboard": False}
    path = root / f"{model}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    return root / "runs" / model


@pytest.fixture(scope="module")
def mlp_run(exported: Path, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("mlp"), exported, "tabular_mlp", {"width": 32, "depth": 2}, epochs=3)


def test_mlp_learns_and_the_baseline_sits_beside_it(mlp_run: Path) -> None:
    metrics = json.loads((mlp_run / "test_metrics.json").read_text())["metrics"]
    assert metrics["auroc"]["value"] > 0.9
    found = json.loads((mlp_run / "explanations.json").read_text())
    baseline = found["Baseline: LightGBM on the same split"]
    assert baseline["lightgbm"]["auroc"]["value"] > 0.9  # scored by the same task evaluation
    assert baseline["booster"].startswith("tree")  # LightGBM's own text format
    importance = found["Feature importance (integrated gradients)"]
    assert len(importance) == 30 and all(v >= 0 for v in importance.values())
    assert len(found["Patients explained (integrated gradients)"]) == 3
    report = (mlp_run / "report.html").read_text()
    assert "Baseline: LightGBM on the same split" in report and "LightGBM" in report
    pre = json.loads((mlp_run / "run.json").read_text())["preprocessing"]
    assert pre["encoding"]["numeric"][0]["name"] == "mean radius"  # JSON, not pickle


def test_predict_applies_the_runs_encoding(mlp_run: Path, exported: Path, tmp_path: Path) -> None:
    # A new table: columns in another order, no label, an extra column (ignored).
    with open(exported, newline="") as f:
        rows = list(csv.DictReader(f))[:10]
    columns = [c for c in reversed(list(rows[0])) if c != "diagnosis"] + ["note"]
    new = tmp_path / "new.csv"
    with open(new, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{**r, "note": "x"} for r in rows])
    out, again = tmp_path / "p.csv", tmp_path / "q.csv"
    assert main(["predict", str(mlp_run), str(new), "-o", str(out)]) == 0
    assert main(["predict", str(mlp_run), str(exported), "-o", str(again)]) == 0
    first = list(csv.DictReader(open(out)))
    whole = {r["path"]: r for r in csv.DictReader(open(again))}
    assert [r["path"] for r in first] == [r["id"] for r in rows]
    for r in first:  # the same rows give the same probabilities whatever the column order
        assert float(r["prob_malignant"]) == pytest.approx(float(whole[r["path"]]["prob_malignant"]), abs=1e-5)
    correct = sum(r["predicted"] == row["diagnosis"] for r, row in zip(first, rows, strict=True))
    assert correct >= 8


def test_ft_transformer_trains_on_the_same_table(exported: Path, tmp_path: Path) -> None:
    run = _train(tmp_path, exported, "ft_transformer", {"d_token": 16, "depth": 1, "heads": 2}, epochs=2)
    metrics = json.loads((run / "test_metrics.json").read_text())["metrics"]
    assert metrics["auroc"]["value"] > 0.8
