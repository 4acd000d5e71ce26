"""Regression end to end: real DNA windows with a target the sequence determines (GC content),
from a CSV, through training, test metrics with CIs, report and prediction in original units."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from biomx.cli import main
from data_paths import DNA


def _table(path: Path, n: int) -> list[tuple[str, str, float]]:
    lines = (DNA / "sample.fa").read_text().splitlines()
    rows = []
    for header, seq in zip(lines[0 : 2 * n : 2], lines[1 : 2 * n : 2], strict=True):
        gc = 100.0 * sum(base in "GCgc" for base in seq) / len(seq)  # percent: tests the unit scaling
        rows.append((header[1:], seq, gc))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sequence", "gc"])
        writer.writerows(rows)
    return rows


@pytest.mark.slow
def test_sequence_regression_predicts_in_original_units(tmp_path, capsys):
    rows = _table(tmp_path / "gc.csv", 600)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "name: gc\n"
        f"data: {{modality: sequence, source: csv, path: {tmp_path / 'gc.csv'}, label_column: gc,\n"
        "       split: {method: random, val: 0.15, test: 0.2}}\n"
        "model: {name: deepsea, args: {width: 16, dropout: 0.0}}\n"
        "task: {kind: regression, loss: mse}\n"
        "train: {epochs: 8, batch_size: 32, progress: false, monitor: val_rmse, optimizer: {lr: 0.003}}\n"
        f"eval: {{bootstrap: 200}}\noutput: {{dir: {tmp_path / 'runs'}, name: gc, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "gc"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["kind"] == "regression" and metrics["n"] == 120
    r2 = metrics["metrics"]["r2"]
    assert r2["value"] > 0.7 and r2["ci_low"] <= r2["value"] <= r2["ci_high"]
    assert "test (n=120): rmse" in capsys.readouterr().err
    assert "r2" in (run / "report.html").read_text()

    queries = tmp_path / "q.csv"
    queries.write_text("id,sequence\n" + "".join(f"{i},{s}\n" for i, s, _ in rows[:50]))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(queries), "-o", str(out)]) == 0
    predicted = [float(r["pred_gc"]) for r in csv.DictReader(open(out))]
    truth = [gc for _, _, gc in rows[:50]]
    # Back in percent, not standardised units: within a few points of the true GC content.
    assert sum(abs(p - t) for p, t in zip(predicted, truth, strict=True)) / 50 < 6.0


def test_non_numeric_target_names_the_row(tmp_path, capsys):
    rows = _table(tmp_path / "gc.csv", 40)
    text = (tmp_path / "gc.csv").read_text().replace(f"{rows[4][2]}", "high", 1)
    (tmp_path / "gc.csv").write_text(text)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"data: {{modality: sequence, source: csv, path: {tmp_path / 'gc.csv'}, label_column: gc}}\n"
                   "model: {name: deepsea}\ntask: {kind: regression}\ntrain: {monitor: val_rmse}\n")
    assert main(["train", str(cfg)]) == 1
    assert f"error: {tmp_path / 'gc.csv'}: row 6: label 'high' is not a number" in capsys.readouterr().err


def test_regression_monitor_is_checked(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"data: {{modality: sequence, source: csv, path: {tmp_path / 'x.csv'}}}\n"
                   "model: {name: deepsea}\ntask: {kind: regression}\ntrain: {monitor: val_auroc}\n")
    assert main(["train", str(cfg)]) == 1
    assert "train.monitor: unknown metric 'val_auroc'" in capsys.readouterr().err
