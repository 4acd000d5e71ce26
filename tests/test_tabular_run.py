"""The tabular modality end to end through the command line, on scikit-learn's breast cancer
table as `biomx datasets` exports it: train (a tiny MLP, a few epochs), the LightGBM baseline
and the attributions in the report, and `biomx predict` applying the run's own encoding."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
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
    import lightgbm

    booster = lightgbm.Booster(model_file=str(mlp_run / baseline["booster_file"]))  # its own text format
    assert booster.num_trees() == baseline["best_iteration"]  # saved at the early-stopping iteration
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


def test_regression_with_patient_groups_and_the_survival_exports(tmp_path: Path) -> None:
    """whas500 as `biomx datasets` exports it (time and event columns for the survival task),
    read as a regression of BMI with a patient column: a grouped split keeps each patient in
    one split, the baseline is scored in the target's units."""
    assert main(["datasets", "--name", "whas500", "--export", str(tmp_path)]) == 0
    assert main(["datasets", "--name", "gbsg2", "--export", str(tmp_path)]) == 0
    header = (tmp_path / "gbsg2.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "id" and header[-2:] == ["time", "event"]
    rows = list(csv.DictReader(open(tmp_path / "whas500.csv")))
    with open(tmp_path / "w.csv", "w", newline="") as f:  # two visits per patient
        writer = csv.DictWriter(f, ["patient_id", *rows[0]])
        writer.writeheader()
        writer.writerows({"patient_id": f"pt{i // 2}", **r} for i, r in enumerate(rows))
    cfg = {"name": "w", "data": {"modality": "tabular", "source": "csv", "path": str(tmp_path / "w.csv"),
                                 "label_column": "bmi", "split": {"method": "group"},
                                 "tabular": {"id_column": "id", "exclude": ["time", "event"], "baseline_rounds": 50}},
           "model": {"name": "tabular_mlp", "args": {"width": 16, "depth": 1, "embedding_dim": 0}},
           "task": {"kind": "regression"}, "train": {"epochs": 1, "progress": False},
           "eval": {"bootstrap": 0, "explain": 2},
           "output": {"dir": str(tmp_path / "runs"), "name": "w", "tensorboard": False}}  # fmt: skip
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "w.yaml")]) == 0
    run = tmp_path / "runs" / "w"
    split = {r["id"]: r["split"] for r in csv.DictReader(open(run / "split.csv"))}
    for k in range(0, len(rows) - 1, 2):  # both visits of a patient in the same split
        assert split[rows[k]["id"]] == split[rows[k + 1]["id"]]
    pre = json.loads((run / "run.json").read_text())["preprocessing"]
    assert "patient_id" not in pre["types"] and "bmi" not in pre["types"] and "time" not in pre["types"]
    found = json.loads((run / "explanations.json").read_text())
    assert found["Baseline: LightGBM on the same split"]["lightgbm"]["rmse"]["value"] < 10  # kg/m2, not z-scores
    assert "gender" in found["Feature importance (integrated gradients)"]


def test_python_predictor_takes_a_dataframe_as_its_csv(mlp_run: Path, exported: Path) -> None:
    """`biomx.load(run).predict_proba(frame)` equals the prediction from the CSV holding it:
    numbers stay numbers, categories and ids are text, and the run's encoding is applied."""
    import pandas as pd

    from biomx.errors import BiomxError
    from biomx.predictor import load

    frame = pd.read_csv(exported).head(20)
    predictor = load(mlp_run)
    from_frame = predictor.predict_proba(frame.drop(columns=["diagnosis"]))
    from_file = predictor.predict_proba(str(exported))[:20]
    assert from_frame == pytest.approx(from_file, abs=1e-6)
    records = frame.drop(columns=["diagnosis"]).to_dict(orient="records")
    assert predictor.predict(records[:3]).tolist() == predictor.predict(str(exported))[:3].tolist()
    with pytest.raises(BiomxError, match="no column 'mean radius'"):
        predictor.predict(frame.drop(columns=["mean radius"]))
    with pytest.raises(BiomxError, match="a tabular run reads tables"):
        predictor.predict(np.zeros((2, 30)))
