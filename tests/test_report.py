"""HTML run report: structure, escaping, robustness to partial inputs, atomic write."""

from __future__ import annotations

import base64
import io
import math
from html.parser import HTMLParser

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from biomx.errors import BiomxError
from biomx.modalities.common.gradcam import gallery_section
from biomx.report import figure_to_data_uri, write_report
from biomx.tasks.classification.report import report_sections as classification_sections
from biomx.tasks.regression.report import report_sections as regression_sections

PNG_PREFIX = "data:image/png;base64,"


class ReportParser(HTMLParser):
    """Collects what the tests look at: images, table rows, <pre> text, start tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.rows: list[list[str]] = []
        self.pre: list[str] = []
        self.captions: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("pre", "figcaption"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("pre", "figcaption"):
            self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in == "pre":
            self.pre.append(data)
        elif self._in == "figcaption":
            self.captions.append(data)

    @property
    def plain_text(self) -> str:
        """All text with whitespace runs collapsed, as a reader sees it."""
        return " ".join("".join(self.text).split())

    def row(self, first_cell: str) -> list[str]:
        return next(r for r in self.rows if r and r[0] == first_cell)


def parse(path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _metric(value: float, spread: float = 0.02) -> dict:
    return {"value": value, "ci_low": value - spread, "ci_high": value + spread}


def _roc_pr(auc: float) -> tuple[dict, dict]:
    fpr = np.linspace(0, 1, 50)
    recall = np.linspace(0, 1, 50)
    roc = {"fpr": fpr.tolist(), "tpr": (fpr ** (1 / auc - 1)).tolist(), "auc": auc}
    pr = {"recall": recall.tolist(), "precision": (1 - 0.3 * recall**3).tolist(), "ap": auc}
    return roc, pr


CALIBRATION = {
    "bin_confidence": [0.05, 0.15, float("nan"), 0.55, 0.75, 0.95],
    "bin_frequency": [0.02, 0.2, float("nan"), 0.5, 0.8, 0.97],
    "bin_count": [300, 40, 0, 30, 60, 354],
    "ece": 0.031,
}


def binary_evaluation() -> dict:
    roc, pr = _roc_pr(0.97)
    return {
        "kind": "binary",
        "headline": ["auroc", "accuracy", "balanced_accuracy", "f1"],
        "n": 784,
        "classes": ["normal", "pneumonia"],
        "threshold": 0.5,
        "ci": 0.95,
        "n_bootstrap": 1000,
        "metrics": {
            "auroc": _metric(0.97),
            "accuracy": _metric(0.91),
            "sensitivity": _metric(0.95),
            "specificity": _metric(0.84),
            "f1": _metric(0.93),
            "ppv": {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")},
        },
        "confusion_matrix": [[197, 37], [21, 529]],
        "curves": {"roc": {"pneumonia": roc}, "pr": {"pneumonia": pr}},
        "calibration": CALIBRATION,
        "per_class": {
            "normal": {"support": 234, "sensitivity": 0.84, "specificity": 0.95},
            "pneumonia": {"support": 550, "sensitivity": 0.95, "specificity": 0.84},
        },
    }


def multiclass_evaluation() -> dict:
    classes = ["benign", "malignant", "normal"]
    curves = {"roc": {}, "pr": {}}
    for name, auc in zip(classes, (0.9, 0.85, 0.95), strict=True):
        curves["roc"][name], curves["pr"][name] = _roc_pr(auc)
    return {
        "kind": "multiclass",
        "headline": ["auroc", "accuracy", "balanced_accuracy", "f1"],
        "n": 156,
        "classes": classes,
        "threshold": None,
        "ci": 0.9,
        "n_bootstrap": 200,
        "metrics": {
            "auroc_macro": _metric(0.9),
            "accuracy": _metric(0.8),
            "balanced_accuracy": _metric(0.7),
        },
        "confusion_matrix": [[40, 5, 3], [6, 30, 4], [2, 1, 65]],
        "curves": curves,
        "calibration": CALIBRATION,
    }


def multilabel_evaluation() -> dict:
    labels = ["effusion", "nodule", "mass"]
    roc = {name: _roc_pr(0.8)[0] for name in labels}
    return {
        "kind": "multilabel",
        "headline": ["auroc", "accuracy", "balanced_accuracy", "f1"],
        "n": 100,
        "classes": labels,
        "threshold": 0.5,
        "ci": 0.95,
        "n_bootstrap": 100,
        "metrics": {"auroc_macro": _metric(0.8), "f1_macro": _metric(0.6)},
        "per_label": {name: [[70, 10], [5, 15]] for name in labels},
        "curves": {"roc": roc},
    }


HISTORY = [
    {
        "epoch": e,
        "step": 74 * e,
        "train_loss": 0.5 / e,
        "val_loss": 0.4 / e,
        "val_auroc": 0.9 + 0.01 * e,
        "val_accuracy": 0.85 + 0.01 * e,
        "lr": 1e-3,
        "samples_per_s": 812.0,
        "time_s": 12.3,
    }
    for e in range(1, 6)
]
ENVIRONMENT = {"python": "3.11.9", "torch": "2.13.0", "device": "cpu"}


def examples() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.random((1, 28, 28)),
            "heatmap": rng.random((28, 28)),
            "caption": "true: pneumonia, p=0.97",
        },
        {"image": rng.random((3, 28, 28)), "heatmap": None, "caption": "true: normal, p=0.12"},
    ]


def _png_images(parser: ReportParser) -> list[bytes]:
    pngs = [base64.b64decode(img["src"][len(PNG_PREFIX) :]) for img in parser.images]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    return pngs


def test_binary_report_has_every_section(tmp_path):
    path = write_report(
        tmp_path / "report.html",
        title="PneumoniaMNIST DenseNet",
        history=HISTORY,
        evaluation=binary_evaluation(),
        config={"model": {"name": "densenet121"}, "lr": 1e-3},
        environment=ENVIRONMENT,
        extra=classification_sections(binary_evaluation()) + gallery_section(examples()),
        notes=["skipped 2 unreadable files"],
    )
    parser = parse(path)
    # learning curves, ROC, PR, confusion, calibration; example 1: image + overlay, 2: image
    assert len(_png_images(parser)) == 8
    assert parser.row("auroc") == ["auroc", "0.970", "[0.950, 0.990]"]
    assert parser.row("ppv") == ["ppv", "n/a", "[n/a, n/a]"]
    assert parser.row("pneumonia")[:2] == ["pneumonia", "550"]
    epochs = parser.row("epoch")
    assert parser.row("5")[epochs.index("lr")] == "0.001"
    assert parser.row("device") == ["device", "cpu"]
    text = parser.plain_text
    assert "auroc 0.970 (95% CI 0.950\u20130.990)" in text
    assert "skipped 2 unreadable files" in text
    assert parser.captions == ["true: pneumonia, p=0.97", "true: normal, p=0.12"]
    assert "name: densenet121" in "".join(parser.pre)
    # Self-contained: nothing to fetch, nothing to run.
    assert not {"script", "link", "iframe"} & set(parser.tags)
    assert all(img["src"].startswith(PNG_PREFIX) for img in parser.images)
    assert path.stat().st_size < 2_000_000


def test_multiclass_report(tmp_path):
    path = write_report(
        tmp_path / "mc.html",
        title="3 classes",
        history=HISTORY,
        evaluation=multiclass_evaluation(),
        config={},
        environment=ENVIRONMENT,
        extra=classification_sections(multiclass_evaluation()),
    )
    parser = parse(path)
    assert len(_png_images(parser)) == 5
    assert parser.row("balanced_accuracy") == ["balanced_accuracy", "0.700", "[0.680, 0.720]"]
    text = parser.plain_text
    # The summary picks "accuracy" itself, not the first name containing it.
    assert "accuracy 0.800 (90% CI 0.780\u20130.820)" in text


def test_multilabel_report_without_top_level_confusion_matrix(tmp_path):
    path = write_report(
        tmp_path / "ml.html",
        title="multilabel",
        history=HISTORY,
        evaluation=multilabel_evaluation(),
        config={},
        environment=ENVIRONMENT,
        extra=classification_sections(multilabel_evaluation()),
    )
    parser = parse(path)
    # learning curves, ROC, the per-label confusion grid; no PR and no calibration given
    assert len(_png_images(parser)) == 3
    assert parser.row("f1_macro")[1] == "0.600"


def test_report_escapes_text_from_config_captions_and_title(tmp_path):
    attack = "<script>alert(1)</script>"
    path = write_report(
        tmp_path / "r.html",
        title=f"run {attack}",
        history=[],
        evaluation=None,
        config={"name": attack, "nested": {"tags": [attack]}},
        environment={"host": attack},
        extra=gallery_section([{"image": np.zeros((1, 8, 8)), "heatmap": None, "caption": attack}]),
        notes=[attack],
    )
    raw = path.read_text(encoding="utf-8")
    assert "<script" not in raw
    parser = parse(path)
    assert "script" not in parser.tags
    assert attack in "".join(parser.pre)
    assert parser.captions == [attack]
    assert parser.row("host") == ["host", attack]


def test_report_tolerates_partial_and_empty_history(tmp_path):
    partial = [
        {"epoch": 1, "train_loss": 0.7},
        {"epoch": 2, "val_auroc": 0.9, "lr": 1e-4},
        {"epoch": 3, "train_loss": float("nan"), "val_auroc": 0.91},
    ]
    parser = parse(
        write_report(
            tmp_path / "p.html",
            title="t",
            history=partial,
            evaluation=None,
            config={},
            environment={},
        )
    )
    assert len(_png_images(parser)) == 1
    assert parser.row("2") == ["2", "n/a", "0.900", "1.00e-04"]
    text = parser.plain_text
    assert "No test split was evaluated." in text

    parser = parse(
        write_report(
            tmp_path / "e.html", title="t", history=[], evaluation=None, config={}, environment={}
        )
    )
    assert parser.images == []
    assert "No training history was recorded." in parser.plain_text

    no_curves = [{"epoch": 1, "lr": 0.1}]  # nothing plottable: a table, no figure
    parser = parse(
        write_report(
            tmp_path / "n.html",
            title="t",
            history=no_curves,
            evaluation=None,
            config={},
            environment={},
        )
    )
    assert parser.images == []
    assert parser.row("1") == ["1", "0.100"]


def test_report_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "out" / "report.html"
    write_report(path, title="first", history=[], evaluation=None, config={}, environment={})
    write_report(
        path,
        title="second",
        history=HISTORY,
        evaluation=binary_evaluation(),
        config={},
        environment={},
    )
    assert "<title>second</title>" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]
    bad = [{"image": np.zeros((1, 8, 8)), "heatmap": np.zeros((4, 4)), "caption": ""}]
    with pytest.raises(BiomxError):
        write_report(
            path,
            title="third",
            history=[],
            evaluation=None,
            config={},
            environment={},
            extra=gallery_section(bad),
        )
    # The failed write left the previous report whole and no temporary file behind.
    assert "<title>second</title>" in path.read_text(encoding="utf-8")
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_config_with_paths_and_numpy_values_is_dumped(tmp_path):
    config = {"data": tmp_path, "seed": np.int64(3), "size": (28, 28), "w": np.float32(0.5)}
    parser = parse(
        write_report(
            tmp_path / "c.html",
            title="t",
            history=[],
            evaluation=None,
            config=config,
            environment={},
        )
    )
    dumped = "".join(parser.pre)
    assert f"data: {tmp_path}" in dumped
    assert "seed: 3" in dumped and "w: 0.5" in dumped


def test_figure_to_data_uri_is_a_decodable_png():
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    uri = figure_to_data_uri(fig)
    assert uri.startswith(PNG_PREFIX)
    pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(uri[len(PNG_PREFIX) :])))
    assert pixels.ndim == 3 and pixels.shape[1] > 100
    assert not math.isnan(float(pixels.mean()))


def regression_evaluation(n_targets: int) -> dict:
    """A real evaluation from RegressionTask (not a hand-written dict), so the two stay in step."""
    from biomx.tasks.regression.task import build_regression_task

    rng = np.random.default_rng(0)
    true = rng.normal(-3.0, 1.5, size=(150, n_targets))
    pred = true + rng.normal(0, 0.5, size=true.shape)
    names = ["logS", "logP", "pKa", "tox", "ames"][:n_targets]
    return build_regression_task(names).evaluate(pred, true, n_bootstrap=100, seed=0)


@pytest.mark.parametrize("n_targets, n_images", [(1, 3), (3, 7), (5, 9)])
def test_regression_report(tmp_path, n_targets, n_images):
    evaluation = regression_evaluation(n_targets)
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_rmse": 0.6 / e}
               for e in range(1, 4)]
    path = write_report(
        tmp_path / "reg.html",
        title="solubility",
        history=history,
        evaluation=evaluation,
        config={},
        environment=ENVIRONMENT,
        extra=regression_sections(evaluation),
    )
    parser = parse(path)
    # learning curves, then a scatter and a residual histogram for at most 4 targets
    assert len(_png_images(parser)) == n_images
    alts = [img["alt"] for img in parser.images]
    assert "logS predicted vs true" in alts and "logS residuals" in alts
    assert "ames residuals" not in alts  # the fifth target has no figures
    rmse, r2 = evaluation["metrics"]["rmse"], evaluation["metrics"]["r2"]
    assert parser.row("rmse") == [
        "rmse", f"{rmse['value']:.3f}", f"[{rmse['ci_low']:.3f}, {rmse['ci_high']:.3f}]"
    ]
    assert [r[0] for r in parser.rows if r and r[0] in evaluation["metrics"]] == [
        "rmse", "mae", "r2", "spearman", "pearson"
    ]
    header = parser.row("target")
    assert header == ["target", "n", "rmse", "mae", "r2", "spearman", "pearson"]
    stats = evaluation["per_target"]["logS"]
    assert parser.row("logS") == ["logS", "150"] + [f"{stats[m]:.3f}" for m in header[2:]]
    text = parser.plain_text
    assert (f"rmse {rmse['value']:.3f} (95% CI {rmse['ci_low']:.3f}\u2013{rmse['ci_high']:.3f})"
            in text)
    assert f"r2 {r2['value']:.3f} (95% CI" in text and "n = 150" in text
    assert "auroc" not in text and "threshold" not in text
    assert ("first 4 of 5 targets" in text) == (n_targets == 5)


def test_regression_report_with_an_unobserved_target(tmp_path):
    from biomx.tasks.regression.task import build_regression_task

    rng = np.random.default_rng(0)
    pred = rng.normal(size=(30, 2))
    true = pred + rng.normal(0, 0.1, size=(30, 2))
    true[:, 1] = np.nan  # no test labels for the second task: table row of n/a, no figures
    evaluation = build_regression_task(["a", "b"]).evaluate(pred, true, n_bootstrap=20)
    parser = parse(
        write_report(tmp_path / "u.html", title="t", history=[], evaluation=evaluation,
                     config={}, environment={}, extra=regression_sections(evaluation))
    )
    assert len(_png_images(parser)) == 2
    assert parser.row("b") == ["b", "0", "n/a", "n/a", "n/a", "n/a", "n/a"]
