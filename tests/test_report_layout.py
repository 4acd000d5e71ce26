"""The report as a reader sees it, from real tiny runs: tables scroll in their box, numbers do not
wrap and read alike, the config shows what the run reads, regression metrics carry units, the
best epoch and the scored checkpoint are marked, notes are text, small test sets are flagged."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from biomx.cli import main
from biomx.report import write_report
from biomx.report.config_view import run_config
from biomx.report.format import fmt, fmt_column
from biomx.tasks.classification.report import metric_counts
from biomx.tasks.regression.report import report_sections
from data_paths import DNA
from test_report import parse

pytestmark = pytest.mark.usefixtures("one_thread")

SCIENTIFIC = re.compile(r"^\d\.\d\de-0\d$")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, png_folder) -> Path:
    """A tiny real run: a 2-epoch small CNN on 160 X-ray PNGs (24 test cases, 5 of them normal)."""
    root = tmp_path_factory.mktemp("layout")
    cfg = root / "exp.yaml"
    cfg.write_text(
        f"name: t\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 2, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: tiny, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / "tiny"


def _regression_run(root: Path, units: str | None) -> Path:
    """A tiny real regression run: GC percent of 80 DNA windows, 16 of them in the test split."""
    lines = (DNA / "sample.fa").read_text().splitlines()
    with open(root / "gc.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sequence", "gc"])
        for header, seq in zip(lines[0:160:2], lines[1:160:2], strict=True):
            writer.writerow([header[1:], seq, 100.0 * sum(b in "GCgc" for b in seq) / len(seq)])
    task = f"{{kind: regression, units: {units!r}}}" if units else "{kind: regression}"
    (root / "exp.yaml").write_text(
        f"name: gc\ndata: {{modality: sequence, source: csv, path: {root / 'gc.csv'}, label_column: gc,\n"
        "       split: {method: random, val: 0.2, test: 0.2}}\n"
        f"model: {{name: deepsea, args: {{width: 8}}}}\ntask: {task}\n"
        "train: {epochs: 2, batch_size: 32, progress: false, monitor: val_rmse}\n"
        f"eval: {{bootstrap: 20, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: gc, tensorboard: false}}\n"
    )
    assert main(["train", str(root / "exp.yaml")]) == 0
    return root / "runs" / "gc"


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    return _regression_run(tmp_path_factory.mktemp("gc"), "% GC")


def _epoch_rows(parser) -> tuple[list[str], list[list[str]]]:
    header = parser.row("epoch")
    start = parser.rows.index(header) + 1
    rows = []
    for row in parser.rows[start:]:
        if len(row) != len(header):
            break
        rows.append(row)
    return header, rows


def test_tables_scroll_in_their_box_and_numbers_never_wrap(image_run):
    raw = (image_run / "report.html").read_text(encoding="utf-8")
    style = raw[raw.index("<style>") : raw.index("</style>")]
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", style)
    assert re.search(r"td\.num \{[^}]*white-space: nowrap", style)
    # Every table sits in the scrolling box: the epoch table no longer runs off the page.
    assert raw.count("<table>") == raw.count('<div class="table-wrap"><table>') >= 4
    header, rows = _epoch_rows(parse(image_run / "report.html"))
    lrs = [row[header.index("lr")] for row in rows]
    # Cosine from 1e-3 over 2 epochs: 5.05e-04 then 1.00e-05, one notation for the column.
    assert lrs == ["5.05e-04", "1.00e-05"]
    assert all(SCIENTIFIC.match(lr) for lr in lrs)
    assert '<td class="num">5.05e-04</td>' in raw  # a numeric, non-wrapping cell
    assert all(re.match(r"^\d\.\d{3}$", row[header.index("val_loss")]) for row in rows)


def test_number_formats():
    assert fmt(5.234e-4) == "5.23e-04" and fmt(0.8125) == "0.812" and fmt(617.91) == "617.9"
    assert fmt(3) == "3" and fmt(float("nan")) == "n/a" and fmt(None) == "n/a" and fmt(2.5e7) == "2.50e+07"
    assert fmt_column([1e-3, 5.05e-4, 1e-5]) == ["1.00e-03", "5.05e-04", "1.00e-05"]
    assert fmt_column([1e-3, 1e-3]) == ["0.001", "0.001"]
    assert fmt_column([3, 0.5, None]) == ["3", "0.500", "n/a"]


def test_config_shows_only_what_the_run_reads(image_run):
    parser = parse(image_run / "report.html")
    shown = yaml.safe_load("".join(parser.pre))
    full = yaml.safe_load((image_run / "config.yaml").read_text())
    assert shown["data"]["modality"] == "image" and shown["data"]["image"]["size"] == [28, 28]
    # The shared data keys, the run's own modality section and nothing else under data.
    assert set(shown["data"]) == {k for k in full["data"] if not isinstance(full["data"][k], dict)} | {
        "split", "image"}  # fmt: skip
    # How paired scans would be read does not apply to a folder of PNGs; config.yaml keeps it.
    assert "scan" not in shown["data"]["image"] and "scan" in full["data"]["image"]
    assert shown["task"] == full["task"] and shown["train"] == full["train"]
    assert "data.image.scan not shown (not read by this run)" in parser.plain_text


def test_best_epoch_and_scored_checkpoint_are_marked(image_run):
    raw = (image_run / "report.html").read_text(encoding="utf-8")
    parser = parse(image_run / "report.html")
    history = [json.loads(line) for line in (image_run / "metrics.jsonl").read_text().splitlines()]
    best = min(history, key=lambda row: row["val_loss"])["epoch"]  # monitor: val_loss (the default)
    header, rows = _epoch_rows(parser)
    marked = [row[0] for row in rows if "best" in row[0]]
    assert marked == [f"{best} best"]
    assert raw.count('<tr class="best">') == 1
    text = parser.plain_text
    assert f"Scored on the test set: the best checkpoint, saved at epoch {best} of 2 (val_loss" in text


def test_notes_are_text_not_a_dict(image_run):
    parser = parse(image_run / "report.html")
    text = parser.plain_text
    assert "split sizes: train 120, val 16, test 24" in text
    assert "{" not in text[text.index("Notes") :] and "&#x27;" not in (image_run / "report.html").read_text()


def test_small_test_set_intervals_are_flagged(image_run):
    parser = parse(image_run / "report.html")
    metrics = json.loads((image_run / "test_metrics.json").read_text())
    negatives, positives = (metrics["per_class"][c]["support"] for c in metrics["classes"])
    assert metrics["n"] == 24 and negatives < positives < 20  # the split of 160 X-rays
    # AUROC rests on its rarer side, sensitivity on the positives; accuracy on 24 cases (enough).
    assert parser.row("auroc")[2].endswith(f"n={negatives} negatives: wide interval")
    assert parser.row("specificity")[2].endswith(f"n={negatives} negatives: wide interval")
    assert parser.row("sensitivity")[2].endswith(f"n={positives} positives: wide interval")
    assert "wide interval" not in parser.row("accuracy")[2]
    summary = parser.plain_text[: parser.plain_text.index("Learning curves")]
    assert f"; n={negatives} negatives: wide interval)" in summary


def test_regression_units_on_metrics_tables_and_axes(regression_run):
    parser = parse(regression_run / "report.html")
    assert [row[0] for row in parser.rows if row and row[0].startswith(("rmse", "mae", "r2"))][:3] == [
        "rmse (% GC)", "mae (% GC)", "r2"]  # fmt: skip
    assert parser.row("target")[:4] == ["target", "n", "rmse (% GC)", "mae (% GC)"]
    alts = [img["alt"] for img in parser.images]
    assert "gc predicted vs true" in alts and "gc residuals" in alts
    # 16 test cases: every interval is flagged.
    assert parser.row("rmse (% GC)")[2].endswith("n=16: wide interval")
    assert "% GC (95% CI" in parser.plain_text
    # The axes of the figures, from the same sections the run's report was built with.
    evaluation = {**json.loads((regression_run / "test_metrics.json").read_text()), "units": "% GC"}
    figures = next(s for s in report_sections(evaluation) if s.get("figures"))["figures"]
    (scatter, _), (residuals, _) = figures
    assert scatter.axes[0].get_xlabel() == "true gc (% GC)"
    assert scatter.axes[0].get_ylabel() == "predicted gc (% GC)"
    assert residuals.axes[0].get_xlabel() == "residual (predicted - true gc) (% GC)"


def test_regression_without_units_is_unchanged(tmp_path):
    run = _regression_run(tmp_path, None)
    parser = parse(run / "report.html")
    assert parser.row("rmse")[0] == "rmse" and parser.row("target")[2] == "rmse"
    assert "(%" not in parser.plain_text


def test_units_are_escaped(tmp_path):
    evaluation = {"kind": "regression", "n": 50, "n_bootstrap": 10, "ci": 0.95,
                  "metrics": {"rmse": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}}}  # fmt: skip
    attack = "<script>x</script>"
    extra = [{"metric_info": {"rmse": {"unit": attack}}}]
    path = write_report(tmp_path / "r.html", title="t", history=[], evaluation=evaluation, config={},
                        environment={}, extra=extra, notes=[{"sizes": {"a": attack}}])  # fmt: skip
    raw = path.read_text(encoding="utf-8")
    assert "<script" not in raw
    assert parse(path).row(f"rmse ({attack})")[1] == "0.500"


def _evaluation(checkpoint: dict) -> dict:
    metric = {"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}
    return {"kind": "binary", "n": 400, "n_bootstrap": 100, "ci": 0.95, "metrics": {"auroc": metric},
            "checkpoint": checkpoint}  # fmt: skip


HISTORY = [{"epoch": e, "val_loss": loss, "val_auroc": auc, "lr": 1e-3}
           for e, loss, auc in ((1, 0.6, 0.80), (2, 0.4, 0.85), (3, 0.5, 0.90))]  # fmt: skip


@pytest.mark.parametrize("checkpoint, marked, said", [
    ({"name": "best", "epoch": 2, "monitor": "val_loss", "value": 0.4, "member_epochs": [2, 3, 1]}, "2",
     "the best checkpoint of each of the 3 ensemble members, saved at epochs 2, 3, 1 of 3; member 1's "
     "(val_loss 0.400) is marked in the epoch table."),
    ({"name": "last", "epoch": 3, "monitor": "val_loss"}, None,
     "the last weights, after epoch 3 of 3; no best checkpoint was saved (val_loss was never a number)."),
    ({"name": "last", "epoch": None}, None, "the model as built; no checkpoint was found."),
])  # fmt: skip
def test_scored_checkpoint_wording(tmp_path, checkpoint, marked, said):
    path = write_report(tmp_path / "r.html", title="t", history=HISTORY, evaluation=_evaluation(checkpoint),
                        config={"train": {"monitor": "val_auroc"}}, environment={})  # fmt: skip
    parser = parse(path)
    assert f"Scored on the test set: {said}" in parser.plain_text
    header, rows = _epoch_rows(parser)
    assert [row[0] for row in rows] == [f"{e} best" if str(e) == marked else str(e) for e in (1, 2, 3)]


@pytest.mark.parametrize("monitor, best", [("val_loss", "2"), ("val_auroc", "3"), ("val_missing", None)])
def test_best_epoch_without_a_test_split_follows_the_monitor(tmp_path, monitor, best):
    """No checkpoint record: the trainer's rule (lower is better for losses; train_loss when the
    monitor was never logged, here absent too)."""
    path = write_report(tmp_path / "r.html", title="t", history=HISTORY, evaluation=None,
                        config={"train": {"monitor": monitor}}, environment={})  # fmt: skip
    header, rows = _epoch_rows(parse(path))
    assert [row[0] for row in rows if row[0].endswith("best")] == ([f"{best} best"] if best else [])


def test_run_config_keeps_shared_keys_and_the_run_s_own_section():
    config = {"name": "x", "data": {"modality": "toy", "source": "csv", "split": {"seed": 0},
                                    "toy": {"size": 3, "pairs": {"a": 1}}, "other": {"size": 9}},
              "task": {"kind": "k", "units": "mm"}}  # fmt: skip
    shown, dropped = run_config(config, "toy", {"modality", "source", "split"}, ["data.toy.pairs", "data.toy"])
    assert shown == {"name": "x", "data": {"modality": "toy", "source": "csv", "split": {"seed": 0},
                                           "toy": {"size": 3}}, "task": {"kind": "k", "units": "mm"}}  # fmt: skip
    assert dropped == ["data.other", "data.toy.pairs"]
    assert "other" in config["data"]  # the caller's dict is left alone


def test_class_counts_behind_multiclass_and_multilabel_intervals():
    multiclass = {"kind": "multiclass", "n": 60, "per_class": {
        "a": {"support": 40}, "b": {"support": 12}, "c": {"support": 8}}}  # fmt: skip
    counts = metric_counts(multiclass)
    assert counts["auroc"] == {"n": 8, "counted": "positives"}  # class c: 8 against 52
    assert counts["specificity"] == {"n": 20, "counted": "negatives"}  # class a: 40 against 20
    assert counts["balanced_accuracy"] == {"n": 8, "counted": "in the smallest class"}
    multilabel = {"kind": "multilabel", "n": 100, "per_class": {
        "x": {"support": 30, "n": 90}, "y": {"support": 85, "n": 95}}}  # fmt: skip
    assert metric_counts(multilabel)["auroc"] == {"n": 10, "counted": "negatives"}  # y: 85 of 95 observed
    assert metric_counts({"kind": "binary", "n": 10}) == {}
