"""The tabular modality's pieces: reading (CSV, Parquet), type inference, the encoding fitted on
the training split only (imputation, indicators, unknown levels), the zoo models, and
attributions summed back to table columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biomx.config import validate
from biomx.modalities.common.table_encoding import encoded_names, fit, model_inputs, transform
from biomx.modalities.common.table_readers import read_table
from biomx.modalities.tabular.interpret import attributions, baseline_row, sum_to_columns
from biomx.modalities.tabular.table import parse
from biomx.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE = """id,age,sex,stage,smoker,crp,outcome
p1,61,F,2,yes,3.2,dead
p2,54,M,1,no,,alive
p3,70,M,3,yes,12.5,dead
p4,45,F,1,no,1.1,alive
p5,,F,2,no,0.8,alive
p6,66,M,4,yes,8.0,dead
"""


def _cfg(path: Path, **tabular) -> object:
    tabular = {"id_column": "id", "cache": False, "columns": {"stage": "categorical"}, **tabular}
    raw = {"data": {"modality": "tabular", "source": path.suffix[1:], "path": str(path),
                    "label_column": "outcome", "tabular": tabular}}  # fmt: skip
    return validate(raw).data


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(TABLE)
    return path


def test_types_are_inferred_and_labels_are_never_features(table: Path) -> None:
    parsed = parse(_cfg(table))
    assert parsed.types == {"age": "numeric", "sex": "categorical", "stage": "categorical",
                            "smoker": "boolean", "crp": "numeric"}  # fmt: skip
    assert parsed.ids[:2] == ["p1", "p2"] and parsed.labels[:2] == ["dead", "alive"]
    assert parse(_cfg(table, columns={}, max_inferred_levels=0)).types["stage"] == "numeric"
    declared = parse(_cfg(table, columns={"stage": "numeric"}, exclude=["crp"]))
    assert declared.types["stage"] == "numeric" and "crp" not in declared.types


def test_encoding_is_fitted_on_train_only(table: Path) -> None:
    parsed = parse(_cfg(table))
    train = np.array([0, 1, 2, 3])
    encoding = fit(parsed.values, parsed.types, train, max_levels=100)
    age = next(c for c in encoding["numeric"] if c["name"] == "age")
    assert age["mean"] == pytest.approx(np.mean([61, 54, 70, 45]))  # p6's 66 (not train) is not in it
    values = {k: v.copy() for k, v in parsed.values.items()}
    values["age"][5] = 1e6  # a value only outside train changes nothing fitted
    assert fit(values, parsed.types, train, max_levels=100) == encoding
    # indicators: crp is missing in train (p2), age is missing only outside train (p5)
    crp = next(c for c in encoding["numeric"] if c["name"] == "crp")
    assert crp["indicator"] and not age["indicator"]
    names, columns = encoded_names(encoding)
    assert "crp missing" in names and columns[names.index("crp missing")] == "crp"
    x = transform(parsed.values, encoding)
    assert x[1, names.index("crp missing")] == 1 and x[0, names.index("crp missing")] == 0
    assert x[1, names.index("crp")] == pytest.approx((crp["median"] - crp["mean"]) / crp["std"])
    # p5's missing age takes the training median; stage 4 (p6) was never seen in train: unknown (0)
    assert x[4, names.index("age")] == pytest.approx((age["median"] - age["mean"]) / age["std"])
    assert x[5, names.index("stage")] == 0 and x[0, names.index("stage")] >= 2
    assert model_inputs(encoding) == {"n_numeric": 4, "cardinalities": [4, 5]}  # sex F/M, stage 1-3


def test_unseen_and_missing_categories_at_predict(table: Path, tmp_path: Path) -> None:
    parsed = parse(_cfg(table))
    encoding = fit(parsed.values, parsed.types, np.arange(6), max_levels=100)
    names, _ = encoded_names(encoding)
    new = {k: v[:3].copy() for k, v in parsed.values.items()}
    new["sex"] = np.array(["X", "", "F"], dtype=object)
    x = transform(new, encoding)
    assert x[:, names.index("sex")].tolist() == [0, 1, 2]  # unknown, missing, the first level


def test_parquet_reads_like_csv(table: Path, tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(table)
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    assert read_table(path).where(0) == f"{path} row 1"
    parsed, from_csv = parse(_cfg(path)), parse(_cfg(table))
    assert parsed.types == from_csv.types and parsed.labels == from_csv.labels
    for name in parsed.types:
        a, b = parsed.values[name], from_csv.values[name]
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b)
        else:
            assert a.tolist() == b.tolist()


@pytest.mark.parametrize("name,args", [("tabular_mlp", {"width": 16, "depth": 2}),
                                       ("tabular_mlp", {"width": 16, "embedding_dim": 0, "norm": "layer"}),
                                       ("ft_transformer", {"d_token": 16, "depth": 1, "heads": 2})])  # fmt: skip
def test_attributions_sum_back_to_columns(name: str, args: dict) -> None:
    torch.manual_seed(0)
    encoded_columns = ["age", "crp", "crp", "sex", "stage"]  # crp and its missingness indicator
    model = build_model(name, n_numeric=3, cardinalities=[3, 5], out_dim=1, **args).eval()
    x = torch.cat([torch.randn(8, 3), torch.randint(0, 3, (8, 1)).float(), torch.randint(0, 5, (8, 1)).float()], 1)
    x[:, 2] = (torch.rand(8) > 0.5).float()
    base = baseline_row(x, 3)
    attr = attributions(model, x, base, None, len(encoded_columns)).numpy()
    assert attr.shape == (8, 5)
    per_column, columns = sum_to_columns(attr, encoded_columns)
    assert columns == ["age", "crp", "sex", "stage"]
    np.testing.assert_allclose(per_column[:, 1], attr[:, 1] + attr[:, 2], rtol=1e-6)
    with torch.no_grad():  # completeness: the attributions add up to f(x) - f(baseline)
        gap = (model(x) - model(base.expand_as(x)))[:, 0].numpy()
    np.testing.assert_allclose(per_column.sum(1), gap, atol=0.1 * np.abs(gap).max() + 1e-3)  # 32 steps


def test_tsv_and_predefined_splits(table: Path, tmp_path: Path) -> None:
    from biomx.modalities.tabular.pipeline import load

    split = ["train", "train", "val", "test", "Train", "validation"]
    lines = TABLE.splitlines()
    text = "\n".join([lines[0].replace(",", "\t") + "\tsplit",
                      *[line.replace(",", "\t") + f"\t{s}" for line, s in zip(lines[1:], split, strict=True)]])  # fmt: skip
    path = tmp_path / "t.tsv"
    path.write_text(text + "\n")
    raw = {"data": {"modality": "tabular", "source": "tsv", "path": str(path), "label_column": "outcome",
                    "split": {"method": "predefined"}, "tabular": {"id_column": "id", "cache": False}}}  # fmt: skip
    samples = load(validate(raw))
    assert "split" not in samples.inputs.types and samples.ids[0] == "p1"
    found = samples.predefined
    assert {k: v.tolist() for k, v in found.items()} == {"train": [0, 1, 4], "val": [2, 5], "test": [3]}
