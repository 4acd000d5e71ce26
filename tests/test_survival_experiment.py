"""Survival end to end on a real cohort: GBSG2 (686 breast cancer patients, recurrence-free
survival) as a CSV read by the tabular modality, a small MLP trained for three epochs as a Cox
model and as a logistic-hazard model, the report, and `biomx predict`'s risk and survival
columns. Bad survival columns stop the run with one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from biomx.cli import main

pytest.importorskip("biomx.modalities.tabular")
sksurv_datasets = pytest.importorskip("sksurv.datasets")
pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = ("Network against a classical Cox model", "Risk groups (Kaplan-Meier)", "Predicted survival curves",
            "Calibration at t = 1095", "Test evaluation")  # fmt: skip


@pytest.fixture(scope="module")
def gbsg2_csv(tmp_path_factory) -> Path:
    """GBSG2 as the tabular modality reads it: features, then time (days) and event (0/1)."""
    x, y = sksurv_datasets.load_gbsg2()
    path = tmp_path_factory.mktemp("gbsg2") / "gbsg2.csv"
    frame = x.copy()
    frame.insert(0, "id", [f"p{i:03d}" for i in range(len(frame))])
    frame["time"], frame["event"] = y["time"], y["cens"].astype(int)
    frame.to_csv(path, index=False)
    return path


def _config(tmp_path: Path, data: Path, model: str, name: str, label: str = "[time, event]") -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{modality: tabular, source: csv, path: {data}, label_column: {label},\n"
        "       split: {method: stratified, val: 0.15, test: 0.15, seed: 0},\n"
        "       tabular: {id_column: id, cache: false, baseline: false}}\n"
        f"task: {{kind: survival, model: {model}, horizons: [365, 1095, 1825], bins: 15, time_unit: days}}\n"
        "model: {name: tabular_mlp, args: {width: 32, depth: 2, dropout: 0.1}}\n"
        "train: {epochs: 3, batch_size: 64, monitor: val_c_index, device: cpu, progress: false,\n"
        "        optimizer: {lr: 0.01}}\n"
        f"eval: {{bootstrap: 50, explain: 2}}\noutput: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    return cfg


@pytest.mark.parametrize("model", ["cox", "logistic_hazard"])
def test_gbsg2_trains_reports_and_predicts(tmp_path, gbsg2_csv, model, capsys):
    assert main(["train", str(_config(tmp_path, gbsg2_csv, model, model))]) == 0
    run = tmp_path / "runs" / model
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["kind"] == "survival" and metrics["n"] == 103
    c = metrics["metrics"]["c_index"]
    assert c["value"] > 0.6 and c["ci_low"] <= c["value"] <= c["ci_high"]  # a linear Cox model gets ~0.68
    assert 0.0 < metrics["metrics"]["ibs"]["value"] < 0.25  # 0.25: the Brier score of S(t) = 0.5
    assert set(metrics["metrics"]) >= {"uno_c", "auc_at_365", "auc_at_1095", "auc_at_1825"}
    assert metrics["cox_ph"]["metrics"]["c_index"]["value"] > 0.6
    assert "test (n=103): c_index" in capsys.readouterr().err
    report = (run / "report.html").read_text()
    assert all(f"<h2>{title}</h2>" in report for title in SECTIONS)
    assert "Log-rank test of equal curves" in report
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "val_c_index" in history[-1]
    if model == "cox":  # the Breslow baseline is plain JSON numbers
        baseline = json.loads((run / "survival_baseline.json").read_text())
        assert len(baseline["times"]) == len(baseline["cumhaz"]) > 10

    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(gbsg2_csv), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 686
    assert list(rows[0]) == ["path", "risk", "survival_at_365", "survival_at_1095", "survival_at_1825"]
    for row in rows[:50]:  # survival falls with time and stays a probability
        s = [float(row[f"survival_at_{h}"]) for h in (365, 1095, 1825)]
        assert 1.0 >= s[0] >= s[1] >= s[2] >= 0.0
    tested = {r["id"]: r for r in csv.DictReader(open(run / "predictions_test.csv"))}
    again = {r["path"]: r for r in rows if r["path"] in tested}
    assert len(again) == 103 and all(abs(float(again[k]["risk"]) - float(tested[k]["risk"])) < 1e-4 for k in tested)
    from biomx.predictor import load

    predictor = load(run)  # the same from Python: the task's own columns, as numbers
    values = predictor.predict(str(gbsg2_csv))
    assert predictor.columns_ == ["risk", "survival_at_365", "survival_at_1095", "survival_at_1825"]
    assert values.shape == (686, 4)
    assert np.allclose(values, [[float(r[c]) for c in predictor.columns_] for r in rows], atol=1e-5)
    if model == "cox":  # S(t) needs the baseline hazard: without it, one line saying where it comes from
        (run / "survival_baseline.json").unlink()
        capsys.readouterr()
        assert main(["predict", str(run), str(gbsg2_csv), "-o", str(out)]) == 1
        assert "survival_baseline.json: missing" in capsys.readouterr().err


def test_all_censored_cohort_is_one_line(tmp_path, gbsg2_csv, capsys):
    text = gbsg2_csv.read_text().splitlines()
    censored = [text[0]] + [line[: line.rfind(",")] + ",0" for line in text[1:]]
    data = tmp_path / "censored.csv"
    data.write_text("\n".join(censored) + "\n")
    assert main(["train", str(_config(tmp_path, data, "cox", "censored"))]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "every sample is censored" in err and "'event'" in err


def test_bad_event_and_time_name_row_and_column(tmp_path, gbsg2_csv, capsys):
    lines = gbsg2_csv.read_text().splitlines()
    lines[5] = lines[5][: lines[5].rfind(",")] + ",2"  # file row 6
    bad = tmp_path / "bad_event.csv"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["train", str(_config(tmp_path, bad, "cox", "bad_event"))]) == 1
    err = capsys.readouterr().err
    assert "row 6" in err and "column 'event'" in err and "0/1" in err
    lines = gbsg2_csv.read_text().splitlines()
    head, _, tail = lines[3].rpartition(",")
    head, _, _ = head.rpartition(",")
    lines[3] = f"{head},-5,{tail}"  # file row 4: a negative time
    bad = tmp_path / "bad_time.csv"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["train", str(_config(tmp_path, bad, "cox", "bad_time"))]) == 1
    err = capsys.readouterr().err
    assert "row 4" in err and "column 'time'" in err and ">= 0" in err


def test_one_label_column_is_refused(tmp_path, gbsg2_csv, capsys):
    assert main(["train", str(_config(tmp_path, gbsg2_csv, "cox", "one", label="time"))]) == 1
    assert "two label columns" in capsys.readouterr().err
