"""model.name: auto: inner cross-validation over model families, a stack or the best one, on real
bioactivity data (MoleculeACE's CHEMBL2147 Ki set, shipped with biomx)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("sklearn")
pytest.importorskip("lightgbm")

from biomx.config import load_config  # noqa: E402
from biomx.errors import ConfigError  # noqa: E402
from biomx.experiment import resume_run, train  # noqa: E402
from biomx.modalities.molecule.starter_data import export_molecules  # noqa: E402
from biomx.selection import stack_weights  # noqa: E402
from biomx.tasks.regression.task import RegressionTask  # noqa: E402

SMALL = "{random_forest: {trees: 40}, lightgbm: {rounds: 150}}"


@pytest.fixture(scope="module")
def chembl(tmp_path_factory) -> Path:
    """The first 240 rows of CHEMBL2147 Ki, with MoleculeACE's split (and a val carve)."""
    return export_molecules("chembl2147_ki", tmp_path_factory.mktemp("chembl"), limit=240)


def _config(tmp_path: Path, data: Path, model: str, name: str = "auto", tensorboard: bool = False) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{modality: molecule, source: csv, path: {data}, label_column: pKi,"
        " molecule: {id_column: id, features: [morgan], morgan_size: 512, morgan_counts: true},"
        " split: {method: predefined, column: split}}\n"
        f"model: {model}\n"
        "task: {kind: regression}\n"
        "train: {progress: false, monitor: val_rmse}\n"
        "eval: {bootstrap: 50, explain: 2}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: {str(tensorboard).lower()}}}\n"
    )
    return cfg


def test_auto_stacks_families_reports_predicts_and_resumes(chembl, tmp_path):
    run = train(load_config(_config(tmp_path, chembl, f"{{name: auto, folds: 3, args: {SMALL}}}")))
    record = json.loads((run / "selection.json").read_text())
    families = {row["name"]: row for row in record["families"]}
    assert set(families) == {"svm", "random_forest", "lightgbm"}
    assert all(len(row["fold_scores"]) == 3 and row["weight"] >= 0 for row in families.values())
    kept = [name for name, row in families.items() if row["weight"] > 0]
    assert kept and sorted(p.name for p in (run / "candidates").iterdir()) == sorted(kept)
    assert not list((run / "candidates").glob("*/checkpoints"))  # the stack's checkpoint holds them
    # The blend of out-of-fold outputs is at least as good as the best family's mean fold score
    # would suggest (its weights were fitted on them); pooled RMSE vs mean RMSE differ a little.
    assert record["stacked_out_of_fold"] <= min(row["mean"] for row in families.values()) * 1.05
    assert "Model selection" in (run / "report.html").read_text()
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["name"] == "stack"
    assert [m["name"] for m in info["model"]["args"]["members"]] == [r["name"] for r in record["families"]]

    # predict from the saved stack equals the test predictions of the run
    import biomx

    rows = [r for r in csv.DictReader(open(chembl)) if r["split"] == "test"][:5]
    saved = {r["id"]: float(r["pred_pKi"]) for r in csv.DictReader(open(run / "predictions_test.csv"))}
    predicted = biomx.load(run).predict([r["smiles"] for r in rows]).reshape(-1)
    np.testing.assert_allclose(predicted, [saved[r["id"]] for r in rows], rtol=1e-4, atol=1e-4)

    # a finished selection resumes without fitting again
    before = (run / "checkpoints" / "best.safetensors").stat().st_mtime_ns
    metrics = json.loads((run / "test_metrics.json").read_text())
    resume_run(run)
    assert (run / "checkpoints" / "best.safetensors").stat().st_mtime_ns == before
    assert json.loads((run / "test_metrics.json").read_text())["metrics"] == metrics["metrics"]


def test_auto_best_keeps_one_family(chembl, tmp_path):
    model = "{name: auto, select: best, folds: 2, candidates: [svm, random_forest], args: {random_forest: {trees: 30}}}"
    run = train(load_config(_config(tmp_path, chembl, model, name="best", tensorboard=True)))
    assert list((run / "tensorboard").iterdir())  # the stack's row reaches the callbacks too
    record = json.loads((run / "selection.json").read_text())
    weights = {row["name"]: row["weight"] for row in record["families"]}
    assert sorted(weights.values()) == [0.0, 1.0]
    best = min(record["families"], key=lambda row: row["mean"])["name"]
    assert weights[best] == 1.0 and record["best"] == best


def test_stack_weights_recover_a_known_blend():
    rng = np.random.default_rng(0)
    a, b, noise = (torch.tensor(rng.normal(size=(300, 1))) for _ in range(3))
    y = 0.7 * a + 0.3 * b + 0.5
    task = RegressionTask(targets=["y"])
    weights, bias = stack_weights(task, [a, b, noise], y)
    np.testing.assert_allclose(weights, [0.7, 0.3, 0.0], atol=1e-3)
    np.testing.assert_allclose(bias, [0.5], atol=1e-3)
    # never negative, even for a family anti-correlated with the target
    weights, _ = stack_weights(task, [a, -y], y)
    assert weights[1] == 0.0 and weights[0] > 0


@pytest.mark.parametrize("model, message", [
    ("{name: svm, candidates: [svm]}", "model.candidates: only read with model.name: auto"),
    ("{name: auto, candidates: [svn]}", "unknown model 'svn' (did you mean 'svm'?)"),
    ("{name: auto, candidates: [resnet18]}", "model.candidates: resnet18 serves image and volume data"),
    ("{name: auto, candidates: [svm, svm]}", "names a model twice"),
    ("{name: auto, candidates: [svm], args: {random_forest: {trees: 5}}}", "model.args.random_forest: with model.name: auto"),
    ("{name: auto, candidates: [random_forest], args: {random_forest: {tres: 5}}}", "model.args.random_forest.tres:"),
])  # fmt: skip
def test_auto_config_mistakes_are_one_line(chembl, tmp_path, model, message):
    with pytest.raises(ConfigError) as err:
        train(load_config(_config(tmp_path, chembl, model, name="bad")))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs" / "bad").exists()


def test_a_solver_ensemble_bags_so_its_spread_is_an_uncertainty(chembl, tmp_path):
    run = train(load_config(_config(tmp_path, chembl, "{name: svm, ensemble: 3}", name="bag")))
    rows = list(csv.DictReader(open(run / "predictions_test.csv")))
    std = np.array([float(r["pred_pKi_std"]) for r in rows])
    assert (std > 0).all()  # identical members (same rows, a deterministic solver) would give 0
    assert "Uncertainty" in (run / "report.html").read_text()


def test_an_interrupted_selection_resumes_by_starting_again(chembl, tmp_path, monkeypatch):
    import biomx.selection as selection
    from biomx.engine.trainer import TrainingInterrupted

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted("interrupted (SIGINT) at epoch 1; continue with: Trainer.fit(resume=True)", 130)

    model = "{name: auto, select: best, folds: 2, candidates: [svm]}"
    real = selection._out_of_fold
    monkeypatch.setattr(selection, "_out_of_fold", interrupted)
    with pytest.raises(TrainingInterrupted) as err:
        train(load_config(_config(tmp_path, chembl, model, name="stop")))
    run = tmp_path / "runs" / "stop"
    assert f"biomx train --resume {run}" in str(err.value) and err.value.exit_code == 130
    monkeypatch.setattr(selection, "_out_of_fold", real)
    resume_run(run)
    assert (run / "test_metrics.json").is_file() and (run / "selection.json").is_file()


def test_auto_stacks_classifiers_on_their_logits(chembl, tmp_path):
    rows = list(csv.DictReader(open(chembl)))
    path = tmp_path / "active.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "smiles", "active", "split"])
        writer.writerows([r["id"], r["smiles"], "yes" if float(r["pKi"]) >= 7.5 else "no", r["split"]] for r in rows)
    cfg = _config(tmp_path, path, f"{{name: auto, folds: 2, args: {SMALL}}}", name="cls")
    cfg.write_text(cfg.read_text().replace("label_column: pKi", "label_column: active")
                   .replace("{kind: regression}", "{kind: classification, classes: ['no', 'yes']}")
                   .replace("monitor: val_rmse", "monitor: val_auroc"))  # fmt: skip
    run = train(load_config(cfg))
    record = json.loads((run / "selection.json").read_text())
    assert record["monitor"] == "val_auroc" and all(0.5 < row["mean"] <= 1.0 for row in record["families"])
    assert json.loads((run / "test_metrics.json").read_text())["metrics"]["auroc"]["value"] > 0.7
