"""Reading clinical tables (CSV, TSV, Parquet) into raw columns, and parsing cells by type.

Every message names the file, the row and the column: `<file> row 12: column 'age': 'abc' is
not a number`. CSV/TSV rows are counted as a spreadsheet shows them (the header is row 1);
Parquet rows from 1.
"""

from __future__ import annotations

import difflib
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomx.errors import ConfigError, DataError

# Cells read as missing (compared lower-cased, stripped): what R, pandas and spreadsheets write.
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "nd", "."})
TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass
class Table:
    """A table's columns as read: strings (CSV/TSV), or numbers and strings (Parquet)."""

    path: Path
    columns: dict[str, np.ndarray]  # name -> cells: object (str) or float arrays
    first_row: int  # the row number of the first data row, for messages

    @property
    def names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where(self, i: int) -> str:
        return f"{self.path} row {i + self.first_row}"

    def column(self, name: str, what: str) -> np.ndarray:
        """The cells of column `name`; a DataError naming the closest column when it is absent."""
        if name not in self.columns:
            close = difflib.get_close_matches(name, self.names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            shown = ", ".join(self.names[:12]) + (" ..." if len(self.names) > 12 else "")
            raise DataError(f"{self.path}: no column {name!r} ({what}){hint}; columns: {shown}")
        return self.columns[name]


@contextmanager
def no_gc() -> Iterator[None]:
    """Build many small lists (a label row per patient) without the cyclic collector: with
    millions of cells alive, its full passes cost more than the building itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def source_of(path: Path, given: str | None = None) -> str:
    """csv, tsv or parquet: `given`, else from the file's suffix (csv by default)."""
    if given:
        return given
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return SUFFIXES.get(suffixes[-1] if suffixes else "", "csv")


def read_table(path: str | Path, source: str | None = None) -> Table:
    """Read a whole table; a DataError (one line) for a missing, unreadable or empty file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = source_of(path, source)
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError(f"{path}: reading tables needs pandas: pip install 'biomx[tabular]'") from None
    if kind == "parquet":
        return _read_parquet(path)

    try:  # every cell as text: types are decided by biomx, not guessed by pandas
        frame = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False,
                            na_filter=False, skipinitialspace=True, encoding="utf-8-sig")  # fmt: skip
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the table is empty (no header and no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: not a readable {kind.upper()} table ({str(err).splitlines()[0]})") from None
    _check_header(path, [str(c) for c in frame.columns])
    if len(frame) == 0:
        raise DataError(f"{path}: the table has a header but no rows")
    columns = {str(c): frame[c].to_numpy(dtype=object) for c in frame.columns}
    return Table(path, columns, first_row=2)


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'biomx[tabular]'") from None
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as err:  # pyarrow raises many kinds (ArrowInvalid, OSError) for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    _check_header(path, [str(c) for c in frame.columns])
    if len(frame) == 0:
        raise DataError(f"{path}: the table has no rows")
    return table_from_frame(frame, path, first_row=1)


def table_from_frame(frame: Any, path: Path, first_row: int) -> Table:
    """A pandas DataFrame as a `Table`: numbers stay numbers (NaN for null), everything else
    (strings, categoricals, booleans with nulls) is text ("" for null), as Parquet columns are."""
    columns = {}
    for c in frame.columns:
        values = frame[c]
        if values.dtype.kind in "biuf":
            columns[str(c)] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            columns[str(c)] = np.array(["" if v is None or v != v else str(v) for v in values], dtype=object)
    return Table(path, columns, first_row=first_row)


def _check_header(path: Path, names: list[str]) -> None:
    if not names:
        raise DataError(f"{path}: the table is empty (no columns)")
    seen: set[str] = set()
    for name in names:
        if name in seen or name.split(".")[0] in seen and name.rsplit(".", 1)[-1].isdigit():
            raise DataError(f"{path}: column {name.split('.')[0]!r} appears twice in the header")
        seen.add(name)


def _factorized(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct cells): each rule below runs once per distinct text, not once per row
    (a 100k-row table has a few thousand distinct values per column)."""
    import pandas as pd

    codes, uniques = pd.factorize(cells, use_na_sentinel=False)
    return codes, np.asarray(uniques, dtype=object)


def _stripped(uniques: np.ndarray) -> list[str]:
    return [str(u).strip() for u in uniques]


def missing_mask(cells: np.ndarray) -> np.ndarray:
    """True where a cell is missing (an empty or NA-like text, or a NaN number)."""
    if cells.dtype.kind == "f":
        return np.isnan(cells)
    codes, uniques = _factorized(cells)
    return np.array([u.lower() in MISSING for u in _stripped(uniques)], dtype=bool)[codes]


def parse_numbers(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values with NaN where missing, rows whose non-missing cell is not a finite number)."""
    if cells.dtype.kind == "f":
        values = cells.astype(np.float64)
        return np.where(np.isinf(values), np.nan, values), np.flatnonzero(np.isinf(values))
    import pandas as pd

    codes, uniques = _factorized(cells)
    text = _stripped(uniques)
    missing = np.array([u.lower() in MISSING for u in text], dtype=bool)
    numbers = pd.to_numeric(pd.Series(["nan" if m else u for u, m in zip(text, missing, strict=True)], dtype=object),
                            errors="coerce").to_numpy(dtype=np.float64)  # fmt: skip
    bad_unique = ~missing & ~np.isfinite(numbers)
    numbers[bad_unique] = np.nan
    return numbers[codes], np.flatnonzero(bad_unique[codes])


def parse_booleans(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1.0 / 0.0 / NaN, rows that are neither true/yes/1 nor false/no/0 nor missing)."""
    if cells.dtype.kind == "f":
        bad = np.flatnonzero(~np.isnan(cells) & ~np.isin(cells, [0.0, 1.0]))
        values = cells.astype(np.float64).copy()
        values[bad] = np.nan
        return values, bad
    codes, uniques = _factorized(cells)
    text = [u.lower() for u in _stripped(uniques)]
    values = np.array([1.0 if u in TRUE else 0.0 if u in FALSE else np.nan for u in text])
    bad_unique = np.isnan(values) & ~np.array([u in MISSING for u in text], dtype=bool)
    return values[codes], np.flatnonzero(bad_unique[codes])


def text_cells(cells: np.ndarray) -> np.ndarray:
    """Categorical cells as stripped text, "" where missing (numbers as written: 1.0 -> "1")."""
    if cells.dtype.kind == "f":
        codes, uniques = _factorized(cells)
        shown = ["" if np.isnan(v) else (str(int(v)) if float(v).is_integer() else repr(float(v))) for v in uniques]
        return np.asarray(shown, dtype=object)[codes]
    codes, uniques = _factorized(cells)
    text = _stripped(uniques)
    return np.asarray(["" if u.lower() in MISSING else u for u in text], dtype=object)[codes]


def bad_value(table: Table, name: str, row: int, kind: str, declared_in: str = "data.tabular.columns") -> DataError:
    """`declared_in`: the config key where the reading modality declares column types."""
    value = table.columns[name][row]
    wanted = "a number" if kind == "numeric" else "true/false, yes/no or 1/0"
    return DataError(f"{table.where(row)}: column {name!r}: {str(value)!r} is not {wanted} "
                     f"(the column is {kind}; declare it in {declared_in} to read it otherwise)")  # fmt: skip
