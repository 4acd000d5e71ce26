"""Bad tables through the real command line: a misspelt column (the closest name suggested), a
non-number in a numeric column, an empty table, a missing label, a file that is not a table.
Every case: a non-zero exit, no traceback, one `error:` line naming the file and, where there is
one, the row and the column."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from biomx.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _table(n: int = 60, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = ["id,age,sex,crp,outcome"]
    for i in range(n):
        age, crp = int(rng.integers(30, 90)), round(float(rng.gamma(2.0, 3.0)), 2)
        outcome = "dead" if age + 3 * crp + rng.normal(0, 10) > 80 else "alive"
        lines.append(f"p{i},{age},{'MF'[i % 2]},{'' if i % 7 == 0 else crp},{outcome}")
    return "\n".join(lines) + "\n"


def _config(root: Path, table: Path, name: str, **data) -> Path:
    cfg = {"name": name,
           "data": {"modality": "tabular", "source": "csv", "path": str(table), "label_column": "outcome",
                    "split": {"method": "random", "val": 0.2, "test": 0.2}, **data},
           "model": {"name": "tabular_mlp", "args": {"width": 8, "depth": 1}},
           "train": {"epochs": 1, "batch_size": 16, "progress": False},
           "eval": {"bootstrap": 0, "explain": 0},
           "output": {"dir": str(root / "runs"), "name": name, "tensorboard": False}}  # fmt: skip
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tab")
    table = root / "good.csv"
    table.write_text(_table())
    assert main(["train", str(_config(root, table, "good", tabular={"id_column": "id", "baseline": False}))]) == 0
    return root / "runs" / "good"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _edit(row: int, column: str, value: str) -> Callable[[str], str]:
    """Set one cell (row counted as a spreadsheet counts: the header is row 1)."""
    def change(text: str) -> str:
        lines = text.splitlines()
        header = lines[0].split(",")
        cells = lines[row - 1].split(",")
        cells[header.index(column)] = value
        lines[row - 1] = ",".join(cells)
        return "\n".join(lines) + "\n"
    return change


@dataclass
class Case:
    id: str
    command: str  # train or predict
    expect: str  # must be in the error line
    text: Callable[[str], str] = lambda t: t
    data: dict | None = None
    suffix: str = ".csv"


CASES = [
    Case("misspelt label column", "train", "no column 'outcom' (data.label_column) (did you mean 'outcome'?)",
         data={"label_column": "outcom"}),
    Case("misspelt declared column", "train", "no column 'crpp' (data.tabular.columns) (did you mean 'crp'?)",
         data={"tabular": {"columns": {"crpp": "numeric"}}}),
    Case("text in a numeric column", "train", "bad.csv row 5: column 'crp': 'high' is not a number",
         text=_edit(5, "crp", "high"), data={"tabular": {"columns": {"crp": "numeric"}}}),
    Case("empty file", "train", "bad.csv: the table is empty", text=lambda t: ""),
    Case("header only", "train", "bad.csv: the table has a header but no rows", text=lambda t: t.splitlines()[0] + "\n"),
    Case("missing label", "train", "bad.csv row 4: column 'outcome': the label is missing", text=_edit(4, "outcome", "")),
    Case("unknown column type", "train", "data.tabular.columns.crp: Input should be 'numeric', 'categorical' or 'boolean'",
         data={"tabular": {"columns": {"crp": "number"}}}),
    Case("not a parquet file", "train", "bad.parquet: not a readable Parquet file", suffix=".parquet",
         data={"source": "parquet"}),
    Case("predict: misspelt feature column", "predict", "no column 'crp' (a feature column of the run) (did you mean 'cpr'?)",
         text=lambda t: t.replace(",crp,", ",cpr,", 1)),
    Case("predict: text in a numeric column", "predict", "bad.csv row 3: column 'age': '6O' is not a number",
         text=_edit(3, "age", "6O")),
    Case("predict: empty table", "predict", "bad.csv: the table has a header but no rows",
         text=lambda t: t.splitlines()[0] + "\n"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_table(case: Case, run: Path, tmp_path: Path, capsys) -> None:
    bad = _write(tmp_path / f"bad{case.suffix}", case.text(_table(seed=1)))
    if case.command == "train":
        argv = ["train", str(_config(tmp_path, bad, "bad", **(case.data or {})))]
    else:
        argv = ["predict", str(run), str(bad), "-o", str(tmp_path / "out.csv")]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code != 0, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
    assert case.expect in errors[0], err
    assert not (tmp_path / "out.csv").exists()


def test_skip_errors_leaves_the_bad_rows_out(run: Path, tmp_path: Path, capsys) -> None:
    bad = _write(tmp_path / "bad.csv", _edit(3, "age", "6O")(_table(seed=1)))
    assert main(["predict", str(run), str(bad), "--skip-errors", "-o", str(tmp_path / "out.csv")]) == 0
    assert "bad.csv row 3" in capsys.readouterr().err
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert len(lines) == 60 and "p1," not in "\n".join(lines)  # header + 59 rows; p1 is row 3


def test_unseen_category_and_missing_values_are_predicted(run: Path, tmp_path: Path) -> None:
    """Not errors: a level never seen in training (the unknown level) and empty cells (the
    training median / the missing level) are what the run's encoding is for."""
    text = _edit(3, "sex", "X")(_edit(4, "age", "")(_edit(5, "sex", "")(_table(seed=2))))
    new = _write(tmp_path / "new.csv", text)
    assert main(["predict", str(run), str(new), "-o", str(tmp_path / "out.csv")]) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 61
