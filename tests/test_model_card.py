"""The model card (docs/trust.md): every run writes model_card.md and model_card.json with the
sections of Mitchell et al. (2019), drawn from the run's own files; `biomx card RUN` rewrites them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from biomx.card.facts import describe_json
from biomx.card.write import SECTIONS
from biomx.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TITLES = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
          "Quantitative analyses", "Ethical considerations", "Caveats and recommendations", "Environment"]  # fmt: skip
USE = "Research on paediatric chest X-rays; second reader in studies only"


def _train(root: Path, png_folder: Path, name: str, extra: str = "", output: str = "") -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 4, depth: 2, norm: group}}\n"
        f"train: {{epochs: 1, batch_size: 16, progress: false{extra}}}\n"
        "eval: {bootstrap: 50, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false{output}}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


@pytest.fixture(scope="module")
def run(tmp_path_factory, png_folder) -> Path:
    """A tiny trained run (1 epoch, 4-wide CNN) that states its intended use."""
    return _train(tmp_path_factory.mktemp("card"), png_folder, "card", output=f", intended_use: '{USE}'")


def _card(run_dir: Path) -> tuple[str, dict]:
    return (run_dir / "model_card.md").read_text(), json.loads((run_dir / "model_card.json").read_text())


def _facts(card: dict, key: str) -> dict:
    return next(s for s in card["sections"] if s["key"] == key)["facts"]


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def test_a_trained_run_has_a_card_with_every_section_and_the_report_links_it(run):
    md, card = _card(run)
    assert [s["title"] for s in card["sections"]] == TITLES and len(SECTIONS) == len(TITLES)
    assert all(f"\n## {title}\n" in md for title in TITLES)
    assert USE in md and _facts(card, "intended_use")["intended use"] == USE
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert _facts(card, "metrics")["test samples"] == metrics["n"]
    auroc = metrics["metrics"]["auroc"]
    assert f"| auroc | {auroc['value']:.3f} [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}] |" in md
    sizes = json.loads((run / "data.json").read_text())["split_sizes"]
    assert _facts(card, "training_data")["train samples"] == sizes["train"]
    assert _facts(card, "evaluation_data")["test samples"] == sizes["test"]
    details = _facts(card, "model_details")
    assert details["parameters"] > 0 and details["licence"].startswith("not stated")
    assert _facts(card, "environment")["device"] == "cpu"
    assert _facts(card, "ethics")["differential privacy"].startswith("not used")
    # Derived from the numbers: 24 test X-rays give wide intervals; no subgroups were evaluated.
    caveats = next(s for s in card["sections"] if s["key"] == "caveats")["items"]
    assert any(c.startswith(f"Small test set (n={metrics['n']})") for c in caveats)
    assert any("not evaluated (eval.subgroups)" in c for c in caveats)
    assert '<a href="model_card.md">model_card.md</a>' in (run / "report.html").read_text()


def test_the_card_names_no_data_path_and_no_sample(run, png_folder):
    md, _ = _card(run)
    js = (run / "model_card.json").read_text()
    ids = [line.split(",")[0] for line in (run / "split.csv").read_text().splitlines()[1:]]
    for text in (md, js):
        assert str(png_folder) not in text and str(png_folder.parent) not in text
        assert not [i for i in ids if i in text or Path(i).name in text]
    assert _facts(json.loads(js), "training_data")["data"] == png_folder.name


def test_without_an_intended_use_the_card_says_it_is_missing(run, tmp_path):
    copy = _copy(run, tmp_path)
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["output"]["intended_use"] = None
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["card", str(copy)]) == 0
    md, card = _card(copy)
    assert USE not in md
    assert _facts(card, "intended_use")["intended use"] == "Not stated: set output.intended_use in the config"
    assert "Not stated: set output.out_of_scope in the config" in md


def test_biomx_card_rewrites_both_files_and_keeps_the_training_environment(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    (copy / "model_card.md").unlink()
    (copy / "model_card.json").write_text("{}")
    assert main(["card", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == f"model card: {copy / 'model_card.md'}"
    md, card = _card(copy)
    assert [s["title"] for s in card["sections"]] == TITLES and "## Caveats and recommendations" in md
    assert card["run"] == "card" and _facts(card, "environment")["device"] in ("cpu", "not recorded")
    # With the previous card in place, `biomx card` keeps the environment that trained the run.
    original = _facts(_card(run)[1], "environment")
    shutil.copy(run / "model_card.json", copy / "model_card.json")
    assert main(["card", str(copy)]) == 0
    assert _facts(_card(copy)[1], "environment") == original


def test_biomx_evaluate_writes_the_card_again(run, tmp_path):
    copy = _copy(run, tmp_path)
    (copy / "model_card.md").unlink()
    (copy / "model_card.json").unlink()
    assert main(["evaluate", str(copy)]) == 0
    md, card = _card(copy)
    assert USE in md and _facts(card, "environment")["device"] == "cpu"  # the environment that evaluated it


def test_biomx_card_on_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run.json" in err and "Traceback" not in err


def test_subgroups_and_operating_point_are_sections_when_present_and_not_evaluated_when_absent(run, tmp_path):
    copy = _copy(run, tmp_path)
    (copy / "operating_point.json").unlink(missing_ok=True)
    assert main(["card", str(copy)]) == 0
    md, card = _card(copy)
    assert "Operating point: not evaluated" in md and "Subgroup results: not evaluated" in md
    assert _facts(card, "factors")["subgroups evaluated"] == "none evaluated: set eval.subgroups"
    metric = {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    subgroups = {"min_group": 30, "ci": 0.95, "n_bootstrap": 50, "columns": {"sex": {
        "groups": [{"group": "F", "n": 40, "flag": "", "metrics": {"auroc": metric}},
                   {"group": "M", "n": 8, "flag": "small", "metrics": {"auroc": {**metric, "value": 0.6}}}],
        "disparity": {"measures": {"auroc": {"by_group": {"F": 0.8, "M": 0.6}, "difference": 0.2, "ratio": 0.75}}}}}}
    (copy / "subgroups.json").write_text(json.dumps(subgroups))
    (copy / "operating_point.json").write_text(json.dumps({"rule": "youden", "threshold": 0.42}))
    (copy / "data_audit.json").write_text(json.dumps({"checks": [
        {"name": "exact duplicates", "status": "problem", "message": "test/train: 2 of 24 test samples"},
        {"name": "outliers", "status": "ok", "message": "none"}]}))
    assert main(["card", str(copy)]) == 0
    md, card = _card(copy)
    assert "| M | 8 | small | 0.600 [0.700, 0.900] |" in md  # the group table, small flag kept
    assert "1 of 2 subgroup results rest on fewer than 30 test samples: indicative only." in md
    assert _facts(card, "metrics")["operating point / threshold"] == 0.42
    assert _facts(card, "quantitative")["subgroups / columns / sex / disparity / measures / auroc / difference"] == 0.2
    assert _facts(card, "factors")["subgroups evaluated"] == "sex"
    assert "| exact duplicates | problem | test/train: 2 of 24 test samples |" in md
    assert "- Data audit, exact duplicates: problem: test/train: 2 of 24 test samples." in md
    assert "Data audit, outliers" not in md
    (copy / "subgroups.json").write_text("{not json")  # a broken optional file: the card still comes
    assert main(["card", str(copy)]) == 0
    assert "subgroups / unreadable" in _card(copy)[1]["sections"][6]["facts"]


def test_a_dp_run_card_shows_its_epsilon(tmp_path, png_folder):
    pytest.importorskip("opacus")
    run_dir = _train(tmp_path, png_folder, "dp", extra=", privacy: {epsilon: 8, delta: 1.0e-5, baseline: false}")
    ledger = json.loads((run_dir / "privacy.json").read_text())
    md, card = _card(run_dir)
    ethics = _facts(card, "ethics")
    assert ethics["differential privacy / epsilon"] == ledger["epsilon"] > 0
    assert ethics["differential privacy / delta"] == 1e-5
    assert f"epsilon {ledger['epsilon']:.3f} at delta 1e-05" in md
    assert _facts(card, "model_details")["differential privacy"].startswith("yes")


def test_nested_json_becomes_facts_and_tables():
    sens = {"value": 1.0, "ci_low": 0.9, "ci_high": 1.0}
    facts, tables = describe_json({"rule": "fixed", "validation": {"n": 16}, "points": {
        "a": {"threshold": 0.5, "test": {"sens": sens, "tp": 3, "fn": 0, "fp": 1}},
        "b": {"threshold": 0.4, "test": {"sens": {**sens, "value": 0.95}, "tp": 1, "fn": 2, "fp": 0}}}})
    assert facts == {"rule": "fixed", "validation / n": 16}
    # Two records of five fields each: one row per field, one column per record.
    assert tables == [{"title": "points", "header": ["points", "a", "b"], "rows": [
        ["threshold", "0.500", "0.400"], ["test / sens", "1.000 [0.900, 1.000]", "0.950 [0.900, 1.000]"],
        ["test / tp", "3", "1"], ["test / fn", "0", "2"], ["test / fp", "1", "0"]]}]
    # Many records of few fields: one row per record, named by its first field when that tells them apart.
    _, (table,) = describe_json({"groups": [{"group": g, "n": n} for g, n in (("F", 40), ("M", 8))]})
    assert table["header"] == ["group", "n"] and table["rows"] == [["F", "40"], ["M", "8"]]
    _, (table,) = describe_json({"groups": [{"n": n} for n in (40, 8)]})
    assert table["header"] == ["groups", "n"] and table["rows"] == [["1", "40"], ["2", "8"]]  # else numbered
    # Records with the same fields beside other entries ("before" and "after" beside a "method").
    facts, (table,) = describe_json({"method": "m", "before": {"gap": 0.3, "acc": 0.7},
                                     "after": {"gap": 0.1, "acc": 0.68}, "rules": {"F": "x > 0.5"}})
    assert facts == {"method": "m", "rules / F": "x > 0.5"}
    assert table["header"] == ["name", "gap", "acc"] and table["rows"] == [["before", "0.300", "0.700"],
                                                                            ["after", "0.100", "0.680"]]
