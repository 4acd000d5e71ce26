"""Subgroups and fairness (`eval.subgroups`, `biomx.fairness`) on real data with demographics: the
Worcester Heart Attack Study (scikit-survival's whas500: 500 patients, sex and age), scored by a
logistic regression for the unit tests and by a tiny MLP run end to end through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from biomx.cli import main
from biomx.config import validate
from biomx.errors import ConfigError
from biomx.fairness import bin_values, evaluate_subgroups, group_weights, subgroup_labels
from biomx.fairness.evaluate import compared_groups
from biomx.modalities import get_modality
from biomx.tasks.classification import build_task

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).parent.parent / "examples" / "fairness_table.yaml"
EVAL = SimpleNamespace(bootstrap=50, ci=0.95, min_group=30)


@pytest.fixture(scope="module")
def whas() -> dict[str, np.ndarray]:
    """Held-out death probabilities of a logistic regression on whas500, with sex and age."""
    from sksurv.datasets import load_whas500

    x, y = load_whas500()
    frame = x.astype(float)
    death = y["fstat"].astype(int)
    index = np.arange(len(frame))
    train, test = train_test_split(index, test_size=0.5, stratify=death, random_state=0)
    scaler = StandardScaler().fit(frame.iloc[train])
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(frame.iloc[train]), death[train])
    probs = model.predict_proba(scaler.transform(frame.iloc[test]))[:, 1]
    return {"probs": probs, "truth": death[test], "sex": frame["gender"].to_numpy()[test].astype(int).astype(str),
            "age": frame["age"].to_numpy()[test]}  # fmt: skip


def test_per_group_metrics_are_the_tasks_metrics_on_that_subset(whas) -> None:
    from sklearn.metrics import recall_score, roc_auc_score

    task = build_task("binary", ["alive", "dead"])
    result = evaluate_subgroups(task, whas["probs"], whas["truth"], {"sex": whas["sex"]}, EVAL, seed=0)
    rows = {r["group"]: r for r in result["columns"]["sex"]["groups"]}
    assert set(rows) == {"0", "1"} and sum(r["n"] for r in rows.values()) == len(whas["truth"])
    for group, row in rows.items():
        idx = whas["sex"] == group
        by_hand = task.evaluate(whas["probs"][idx], whas["truth"][idx], n_bootstrap=50, ci=0.95, seed=0)["metrics"]
        assert row["metrics"] == by_hand  # values and CIs: the task's own evaluation of the subset
        y, p = whas["truth"][idx], whas["probs"][idx]
        assert row["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(y, p))
        assert row["metrics"]["sensitivity"]["value"] == pytest.approx(recall_score(y, p >= 0.5))
        assert row["metrics"]["ece"]["value"] >= 0  # calibration per group
        assert row["metrics"]["auroc"]["ci_low"] <= row["metrics"]["auroc"]["value"] <= row["metrics"]["auroc"]["ci_high"]


def test_disparity_equals_fairlearn(whas) -> None:
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        true_negative_rate,
        true_positive_rate,
    )

    task = build_task("binary", ["alive", "dead"], threshold=0.4)
    y, p, sex = whas["truth"], whas["probs"], whas["sex"]
    found = task.group_disparity(p, y, sex)
    pred = (p >= 0.4).astype(int)
    frame = MetricFrame(metrics={"sensitivity": true_positive_rate, "specificity": true_negative_rate},
                        y_true=y, y_pred=pred, sensitive_features=sex)  # fmt: skip
    for name in ("sensitivity", "specificity"):
        assert found["measures"][name]["difference"] == pytest.approx(frame.difference()[name])
        assert found["measures"][name]["ratio"] == pytest.approx(frame.ratio()[name])
        assert found["measures"][name]["by_group"]["1"] == pytest.approx(frame.by_group[name]["1"])
    assert found["overall"]["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=sex))
    assert found["overall"]["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=sex))
    assert 0 < found["measures"]["auroc"]["ratio"] <= 1
    assert build_task("multiclass", ["a", "b", "c"]).group_disparity(np.eye(3), np.arange(3), sex[:3]) is None


def test_thresholds_fitted_on_validation_reduce_equalised_odds(whas) -> None:
    task = build_task("binary", ["alive", "dead"])
    y, p, sex = whas["truth"], whas["probs"], whas["sex"]
    half = len(y) // 2
    fitted = task.group_thresholds((p[:half], y[:half], sex[:half]), (p[half:], y[half:], sex[half:]), seed=0)
    assert set(fitted["rules"]) == {"0", "1"} and "score" in fitted["rules"]["0"]
    before, after = fitted["before"], fitted["after"]
    assert before["equalized_odds_difference"] == pytest.approx(
        task.group_disparity(p[half:], y[half:], sex[half:])["overall"]["equalized_odds_difference"])
    assert after["equalized_odds_difference"] < before["equalized_odds_difference"]


def test_small_groups_are_flagged_not_hidden(whas) -> None:
    task = build_task("binary", ["alive", "dead"])
    decades = bin_values(whas["age"], "age")
    result = evaluate_subgroups(task, whas["probs"], whas["truth"], {"age": decades}, EVAL, seed=0)
    rows = result["columns"]["age"]["groups"]
    assert sum(r["n"] for r in rows) == len(decades)  # every sample is in a shown group
    assert all((r["flag"] == "small") == (r["n"] < 30) for r in rows)
    assert any(r["flag"] for r in rows) and any(not r["flag"] for r in rows)
    assert result["columns"]["age"]["compared_groups"] == compared_groups(rows)
    assert all(r["n"] >= 30 for r in rows if r["group"] in compared_groups(rows))


def test_numbers_are_binned_never_kept_raw() -> None:
    ages = np.array(["61", "54", "", "87", "45", "70", "33", "66", "92", "58", "71", "49"], dtype=object)
    assert bin_values(ages, "age").tolist()[:4] == ["60-69", "50-59", "missing", "80-89"]
    assert bin_values(ages, "PatientAge")[0] == "60-69"  # a DICOM header field is an age column too
    quartiles = bin_values(ages, "crp")  # another number: quartiles, labelled by their bounds
    assert len(set(quartiles) - {"missing"}) == 4 and quartiles[0].startswith("Q")
    assert not set(ages.tolist()) & set(quartiles.tolist())
    assert bin_values(np.array(["0", "1", "1"], dtype=object), "sex").tolist() == ["0", "1", "1"]  # few levels
    assert bin_values(np.array(["F", " M", None], dtype=object), "sex").tolist() == ["F", "M", "missing"]


def test_group_weights_make_group_and_label_independent(whas) -> None:
    sex, y = whas["sex"], whas["truth"]
    train = np.arange(len(y) - 20)
    w = group_weights(sex, y, train)
    assert w[train].mean() == pytest.approx(1.0, rel=1e-5) and (w[len(y) - 20:] == 1).all()
    total = w[train].sum()
    for g in ("0", "1"):
        for label in (0, 1):
            cell = w[train][(sex[train] == g) & (y[train] == label)].sum() / total
            marginal = (w[train][sex[train] == g].sum() / total) * (w[train][y[train] == label].sum() / total)
            assert cell == pytest.approx(marginal, abs=1e-6)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whas")
    assert main(["datasets", "--name", "whas500", "--export", str(root)]) == 0
    return root / "whas500.csv"


def test_a_missing_column_is_one_line_before_training(table: Path, tmp_path: Path, capsys) -> None:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["data"]["path"] = str(table)
    cfg["eval"]["subgroups"] = ["gender", "site"]
    cfg["output"] = {"dir": str(tmp_path / "runs"), "name": "missing"}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'site'" in err[0] and "eval.subgroups" in err[0] and "gender" in err[0]
    assert not (tmp_path / "runs" / "missing").exists()  # refused before anything was trained
    experiment = validate({**cfg, "eval": {"subgroups": ["age_group", "gender"]}})
    modality = get_modality("tabular")
    labels = subgroup_labels(experiment, modality, modality.load(experiment))
    assert set(labels["age_group"]) >= {"60-69", "70-79"} and set(labels["gender"]) == {"0", "1"}
    with pytest.raises(ConfigError, match="no column 'ses'"):
        subgroup_labels(validate({**cfg, "eval": {"subgroups": ["ses"]}}), modality, modality.load(experiment))


def test_a_tabular_run_writes_subgroups_and_the_report_section(table: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["data"]["path"] = str(table)
    cfg["model"]["args"] = {"width": 16, "depth": 1}
    cfg["train"].update(epochs=2, progress=False)
    cfg["eval"].update(bootstrap=20)
    cfg["output"] = {"dir": str(tmp_path / "runs"), "name": "fair", "tensorboard": False}
    path = tmp_path / "fair.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    run = tmp_path / "runs" / "fair"
    found = json.loads((run / "subgroups.json").read_text())
    assert list(found["columns"]) == ["gender", "age_group"]
    gender = found["columns"]["gender"]
    assert sum(r["n"] for r in gender["groups"]) == 150  # the test split (0.3 of 500)
    assert {"before", "after", "rules"} <= set(gender["thresholds"])
    assert "equalized_odds_difference" in gender["disparity"]["overall"]
    assert any(r["flag"] == "small" for r in found["columns"]["age_group"]["groups"])
    report = (run / "report.html").read_text()
    for title in ("Subgroups: gender", "Disparity across gender", "Per-group thresholds by age_group"):
        assert title in report
    assert all(re.fullmatch(r"\d+-\d+|missing", r["group"]) for r in found["columns"]["age_group"]["groups"])


def test_image_columns_from_the_manifest_headers_and_intensity(png_folder: Path, dicom_folder: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    import csv

    from biomx.modalities.image.subgroups import _age_years

    rows = list(csv.DictReader(open(png_folder / "manifest.csv", newline="")))
    sites = ["north" if i % 3 else "south" for i in range(len(rows))]
    manifest = png_folder / "manifest_sites.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "site"])
        writer.writeheader()
        writer.writerows([{**row, "site": site} for row, site in zip(rows, sites, strict=True)])
    raw = {"data": {"modality": "image", "source": "csv", "path": str(manifest), "image": {"size": [28, 28]}},
           "task": {"kind": "classification", "classes": ["normal", "pneumonia"]},
           "eval": {"subgroups": ["site", "mean_intensity"]}}  # fmt: skip
    cfg = validate(raw)
    image = get_modality("image")
    samples = image.load(cfg)
    labels = subgroup_labels(cfg, image, samples)
    by_path = {str(png_folder / row["path"]): site for row, site in zip(rows, sites, strict=True)}
    assert labels["site"].tolist() == [by_path[i] for i in samples.ids]  # aligned with the loaded samples
    assert len(set(labels["mean_intensity"])) == 4 and all(g.startswith("Q") for g in labels["mean_intensity"])
    cfg = validate({**raw, "data": {**raw["data"], "path": str(dicom_folder / "manifest.csv")},
                    "eval": {"subgroups": ["PatientSex", "PatientAge_group"]}})  # fmt: skip
    found = subgroup_labels(cfg, image, image.load(cfg))
    assert len(found["PatientSex"]) == 120 and len(found["PatientAge_group"]) == 120  # read only when asked
    assert _age_years("045Y") == 45 and _age_years("006M") == 0.5 and np.isnan(_age_years("abc"))
