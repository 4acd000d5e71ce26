"""The history modality on small hand-made tables: landmarking (nothing after the landmark reaches
the model; only patients at risk, times from the landmark), the encoding (forward fill, indicators,
time features, standardisation fitted on the training patients), long = wide, padding never
changes a prediction, and one-line errors naming file, row and column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from biomx.config import validate
from biomx.errors import DataError
from biomx.experiment import prepare
from biomx.modalities.history.encode import encode_visits
from biomx.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

N_PATIENTS = 40


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _tables(root: Path, after: float = 0.0, extra_late_visit: bool = False) -> tuple[Path, Path]:
    """Patients with visits at irregular times; `after` is added to every value measured after
    time 5 (the landmark in these tests), `extra_late_visit` adds a visit at time 7."""
    rng = np.random.default_rng(0)
    history, baseline = [], []
    for p in range(N_PATIENTS):
        times = np.sort(rng.choice(np.arange(0, 12), size=rng.integers(2, 7), replace=False))
        times = times - times[0]
        for t in times.tolist():
            late = after if t > 5 else 0.0
            lab = "" if rng.random() < 0.2 else f"{rng.normal(p % 3, 1) + late:.4f}"
            history.append({"id": f"p{p}", "time": t, "crp": f"{rng.normal(5, 2) + late:.4f}", "alb": lab})
        if extra_late_visit and 7 not in times:  # no random draw: the other patients stay the same
            history.append({"id": f"p{p}", "time": 7, "crp": "999", "alb": "-999"})
        baseline.append({"id": f"p{p}", "age": 40 + p, "sex": "mf"[p % 2], "time": 3 + (p * 7) % 15,
                         "event": p % 2})  # fmt: skip
    return _write(root / "h.csv", history), _write(root / "b.csv", baseline)


def _cfg(history: Path, baseline: Path, **settings) -> dict:
    return {
        "name": "h",
        "data": {"modality": "history", "source": "csv", "path": str(history), "label_column": ["time", "event"],
                 "history": {"baseline": str(baseline), **settings},
                 "split": {"method": "random", "val": 0.2, "test": 0.2, "seed": 0}},
        "model": {"name": "history_gru", "args": {"width": 8}},
        "task": {"kind": "survival"},
    }  # fmt: skip


def _inputs(root: Path, model: str = "history_gru", **kw) -> tuple[torch.Tensor, torch.Tensor, list[str], list]:
    history, baseline = _tables(root, **kw)
    p = prepare(validate(_cfg(history, baseline, landmark=5, at_risk_column="time") | {"model": {"name": model}}))
    x = p.datasets["train"].x
    torch.manual_seed(0)
    net = build_model(model, **p.info["model"]["args"]).eval()
    with torch.no_grad():
        return x, net(x), p.data.ids, p.data.labels


def test_nothing_after_the_landmark_reaches_the_model(tmp_path: Path) -> None:
    for model in ("history_gru", "history_transformer"):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "b").mkdir(exist_ok=True)
        x, out, ids, labels = _inputs(tmp_path / "a", model)
        # Every value after the landmark changed, and a visit added after it: identical inputs.
        x2, out2, ids2, labels2 = _inputs(tmp_path / "b", model, after=1000.0, extra_late_visit=True)
        assert ids == ids2 and labels == labels2
        assert torch.equal(x, x2) and torch.equal(out, out2)
    # Without the landmark the same change does reach the inputs (the test above has teeth).
    plain = [prepare(validate(_cfg(*_tables(tmp_path / d, **kw)))).datasets["train"].x
             for d, kw in (("a", {}), ("b", {"after": 1000.0, "extra_late_visit": True}))]  # fmt: skip
    assert plain[0].shape != plain[1].shape or not torch.equal(plain[0], plain[1])


def test_landmark_keeps_patients_at_risk_with_times_from_the_landmark(tmp_path: Path) -> None:
    _, _, ids, labels = _inputs(tmp_path)
    times = {f"p{p}": 3 + (p * 7) % 15 for p in range(N_PATIENTS)}
    assert ids == [p for p, t in times.items() if t > 5]
    assert [float(lab[0]) for lab in labels] == [times[p] - 5 for p in ids]


def test_encoding_forward_fills_and_marks_what_was_measured() -> None:
    stats = [{"name": "a", "mean": 1.0, "std": 2.0}, {"name": "b", "mean": 0.0, "std": 1.0}]
    values = np.array([[3.0, np.nan], [np.nan, 2.0], [5.0, np.nan]])
    block = encode_visits(np.array([0.0, 2.0, 5.0]), values, stats, max_visits=4, time_scale=1.0)
    assert block.shape == (4, 7)
    np.testing.assert_allclose(block[:3, 0], [1.0, 1.0, 2.0])  # standardised, carried forward
    np.testing.assert_allclose(block[:3, 1], [0.0, 2.0, 2.0])  # 0 before its first measurement
    np.testing.assert_allclose(block[:3, 2:4], [[1, 0], [0, 1], [1, 0]])  # measured at this visit
    np.testing.assert_allclose(block[:3, 4], [0, 2, 5])  # time since the first visit
    np.testing.assert_allclose(block[:3, 5], [0, 2, 3])  # gap since the previous visit
    np.testing.assert_allclose(block[:, 6], [1, 1, 1, 0])  # real visits, then padding
    assert not block[3].any()


def test_standardisation_is_fitted_on_training_patients_only(tmp_path: Path) -> None:
    history, baseline = _tables(tmp_path)
    p = prepare(validate(_cfg(history, baseline)))
    train_ids = {p.data.ids[i] for i in p.splits["train"]}
    rows = list(csv.DictReader(open(history)))
    for row in rows:  # val/test patients' values changed: the fitted statistics must not move
        if row["id"] not in train_ids:
            row["crp"] = "1000"
    changed = tmp_path / "h2.csv"
    _write(changed, rows)
    q = prepare(validate(_cfg(changed, baseline)))
    assert p.info["preprocessing"]["variables"] == q.info["preprocessing"]["variables"]
    assert p.info["preprocessing"]["encoding"] == q.info["preprocessing"]["encoding"]


def test_long_layout_equals_wide(tmp_path: Path) -> None:
    history, baseline = _tables(tmp_path)
    rows = list(csv.DictReader(open(history)))
    long_rows = [{"id": r["id"], "time": r["time"], "variable": v, "value": r[v]}
                 for r in rows for v in ("alb", "crp") if r[v] != ""]  # fmt: skip
    long_path = _write(tmp_path / "long.csv", long_rows)
    wide = prepare(validate(_cfg(history, baseline, variables=["alb", "crp"])))
    long = prepare(validate(_cfg(long_path, baseline, layout="long")))
    assert torch.equal(wide.datasets["train"].x, long.datasets["train"].x)


@pytest.mark.parametrize("model,args", [("history_gru", {"cell": "gru"}), ("history_gru", {"cell": "lstm"}),
                                        ("history_transformer", {"heads": 2})])  # fmt: skip
def test_padding_never_changes_a_prediction(model: str, args: dict) -> None:
    torch.manual_seed(0)
    net = build_model(model, n_numeric=2, cardinalities=[3], n_variables=2, max_visits=5, out_dim=1,
                      width=8, dropout=0.0, **args).eval()  # fmt: skip
    x = torch.randn(4, 3 + 5 * 7)
    x[:, 2] = 1.0  # a valid level index
    steps = x[:, 3:].view(4, 5, 7)
    steps[:, :, -1] = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    steps[steps[:, :, -1] == 0] = 0.0
    garbage = x.clone()
    pad = garbage[:, 3:].view(4, 5, 7)
    pad[..., :-1] += 50.0 * (pad[..., -1:] == 0)  # padded steps filled with junk (flag stays 0)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(garbage))


def _refused(tmp_path: Path, history_rows: list[dict], baseline_rows: list[dict] | None = None) -> str:
    history = _write(tmp_path / "bad.csv", history_rows)
    baseline = _write(tmp_path / "base.csv", baseline_rows or [{"id": "a", "age": 1, "time": 4, "event": 1},
                                                               {"id": "b", "age": 2, "time": 5, "event": 0}])  # fmt: skip
    with pytest.raises(DataError) as info:
        prepare(validate(_cfg(history, baseline)))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line_naming_file_row_and_column(tmp_path: Path) -> None:
    ok = [{"id": "a", "time": 0, "crp": 1}, {"id": "b", "time": 0, "crp": 2}]
    message = _refused(tmp_path, [*ok, {"id": "zz", "time": 1, "crp": 3}])
    assert "bad.csv row 4: column 'id': patient 'zz' has no row in the baseline table" in message
    message = _refused(tmp_path, [*ok, {"id": "a", "time": -2, "crp": 3}])
    assert "bad.csv row 4: column 'time': the visit time is negative" in message
    message = _refused(tmp_path, [*ok, {"id": "a", "time": 2, "crp": "high"}])
    assert "bad.csv row 4: column 'crp': 'high' is not a number" in message
    message = _refused(tmp_path, [{"id": "a", "when": 0, "crp": 1}])
    assert "bad.csv: no column 'time' (data.history.time_column)" in message
    message = _refused(tmp_path, ok, [{"id": "a", "age": 1, "time": 4}, {"id": "b", "age": 2, "time": 5}])
    assert "base.csv: no column 'event' (data.label_column)" in message
    message = _refused(tmp_path, ok, [{"id": "a", "age": 1, "time": 4, "event": 1},
                                      {"id": "a", "age": 2, "time": 5, "event": 0}])  # fmt: skip
    assert "base.csv row 3: column 'id': patient 'a' has a second baseline row" in message


@pytest.mark.parametrize("kind,label,model", [("classification", "event", "history_gru"),
                                              ("regression", "time", "history_transformer")])  # fmt: skip
def test_classification_and_regression_train_and_predict(tmp_path: Path, kind: str, label: str, model: str) -> None:
    import yaml

    from biomx.cli import main

    history, baseline = _tables(tmp_path)
    cfg = _cfg(history, baseline) | {"model": {"name": model, "args": {"width": 8}}, "task": {"kind": kind}}
    cfg["data"]["label_column"] = label
    cfg["data"]["history"]["exclude"] = ["time" if label == "event" else "event"]  # the other outcome
    cfg["train"] = {"epochs": 1, "batch_size": 8, "progress": False}
    cfg["eval"] = {"bootstrap": 5, "explain": 0}
    cfg["output"] = {"dir": str(tmp_path / "runs"), "name": kind, "tensorboard": False}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    out = tmp_path / "p.csv"
    assert main(["predict", str(tmp_path / "runs" / kind), str(history), "-o", str(out)]) == 0
    assert len(list(csv.DictReader(open(out)))) == N_PATIENTS


def test_a_bad_baseline_covariate_names_the_history_key(tmp_path: Path) -> None:
    history, baseline = _tables(tmp_path)
    rows = list(csv.DictReader(open(baseline)))
    rows[3]["age"] = "old"
    _write(baseline, rows)
    with pytest.raises(DataError, match=r"b.csv row 5: column 'age': 'old' is not a number .*data.history.columns"):
        prepare(validate(_cfg(history, baseline, columns={"age": "numeric"})))


def test_a_missing_label_is_one_line(tmp_path: Path) -> None:
    history, baseline = _tables(tmp_path)
    rows = list(csv.DictReader(open(baseline)))
    rows[2]["event"] = ""
    _write(baseline, rows)
    with pytest.raises(DataError, match=r"^.*b.csv row 4: column 'event': the label is missing \(1 rows lack it; "
                                        r"drop those rows\)$"):  # fmt: skip
        prepare(validate(_cfg(history, baseline)))


def test_parquet_tables_read_as_csv(tmp_path: Path) -> None:
    import pandas as pd

    history, baseline = _tables(tmp_path)
    for path in (history, baseline):
        pd.read_csv(path, dtype=str, keep_default_na=False).to_parquet(path.with_suffix(".parquet"))
    csv_run = prepare(validate(_cfg(history, baseline)))
    cfg = _cfg(history.with_suffix(".parquet"), baseline.with_suffix(".parquet"))
    cfg["data"]["source"] = "parquet"
    parquet_run = prepare(validate(cfg))
    assert torch.equal(csv_run.datasets["train"].x, parquet_run.datasets["train"].x)
