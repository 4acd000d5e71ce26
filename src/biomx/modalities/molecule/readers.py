"""Molecule files: a CSV/TSV with a SMILES column, or an SDF whose properties hold the targets.

`read_molecule_table` and `read_sdf` give `MoleculeRecords`, as read (not yet standardised:
see `molecule.standardize`).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem
from rdkit.rdBase import BlockLogs

from biomx.errors import DataError


@dataclass
class MoleculeRecords:
    """Molecules as read from a file, before standardisation, index-aligned."""

    smiles: list[str]  # as read; for SDF the RDKit SMILES ("" when the block is unreadable)
    ids: list[str]  # id column / property, else "row N" (CSV) or the title / "record N" (SDF)
    labels: list[list[str]]  # one string per label column, "" when missing
    where: list[str]  # "file.csv row 12", "file.sdf record 3": for messages


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    lower = {n.lower(): n for n in names}
    if name.lower() in lower:
        close = [lower[name.lower()]]
    else:
        close = difflib.get_close_matches(name, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _missing(path: Path, what: str, plural: str, name: str, found: Sequence[str]) -> DataError:
    listed = ", ".join(found[:30]) + (", ..." if len(found) > 30 else "") or "none"
    hint = _did_you_mean(name, found)
    return DataError(f"{path}: no {what} {name!r} ({plural} found: {listed}){hint}")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _delimiter(path: Path, first_line: str) -> str:
    """Tab for .tsv/.tab, comma for .csv, else sniffed from the header line."""
    suffix = Path(path.name.lower().removesuffix(".gz")).suffix
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(first_line, delimiters=",\t;").delimiter
    except csv.Error:
        return ","


def read_molecule_table(path: str | Path, smiles_column: str = "smiles",
                        label_columns: list[str] | None = None,
                        id_column: str | None = None) -> MoleculeRecords:
    """Read a CSV/TSV (optionally .gz) with one molecule per row.

    Rows are numbered as in a spreadsheet (header = row 1). An empty SMILES cell is kept (and
    reported as invalid by `standardize`), so row numbers stay aligned with the file.

    Raises:
        DataError: a missing or unreadable file, a missing column (with the columns found and
            the closest name).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with _open_text(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    first = text.split("\n", 1)[0]
    try:
        reader = csv.reader(io.StringIO(text), delimiter=_delimiter(path, first))
        header = [name.strip() for name in next(reader, [])]
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: cannot read table: {e}") from None
    if not header:
        raise DataError(f"{path}: empty file (expected a header with a {smiles_column!r} column)")
    label_columns = list(label_columns or [])
    for name in [smiles_column, *label_columns, *([id_column] if id_column else [])]:
        if name not in header:
            raise _missing(path, "column", "columns", name, header)
    col = {name: header.index(name) for name in header}  # first occurrence wins

    def cell(row: list[str], name: str) -> str:
        i = col[name]
        return row[i].strip() if i < len(row) else ""

    records = MoleculeRecords([], [], [], [])
    for n, row in enumerate(rows, start=2):
        if not any(c.strip() for c in row):
            continue  # blank line
        records.smiles.append(cell(row, smiles_column))
        records.ids.append((cell(row, id_column) if id_column else "") or f"row {n}")
        records.labels.append([cell(row, name) for name in label_columns])
        records.where.append(f"{path.name} row {n}")
    return records


def read_sdf(path: str | Path, label_columns: list[str] | None = None,
             id_property: str | None = None) -> MoleculeRecords:
    """Read an SDF (optionally .sdf.gz); targets come from the records' properties.

    A molecule block RDKit cannot read is kept as an invalid record ("" SMILES, or SMILES that
    fail sanitisation again in `standardize` with RDKit's message), never a crash.

    Raises:
        DataError: a missing file, a label / id property that no record has.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    label_columns = list(label_columns or [])
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    records, seen = MoleculeRecords([], [], [], []), set()
    try:
        with opener(path, "rb") as f, BlockLogs():
            supplier = Chem.ForwardSDMolSupplier(f, sanitize=False, removeHs=False)
            for n, mol in enumerate(supplier, start=1):
                # Property values as written (GetPropsAsDict would turn "007" into 7).
                props = {k: mol.GetProp(k).strip() for k in mol.GetPropNames()} if mol else {}
                seen.update(props)
                title = mol.GetProp("_Name").strip() if mol and mol.HasProp("_Name") else ""
                pid = props.get(id_property, "") if id_property else ""
                records.smiles.append(_sdf_smiles(mol))
                records.ids.append(pid or title or f"record {n}")
                records.labels.append([props.get(name, "") for name in label_columns])
                records.where.append(f"{path.name} record {n}")
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read SDF: {e}") from None
    if records.smiles:
        for name in [*label_columns, *([id_property] if id_property else [])]:
            if name not in seen:
                raise _missing(path, "property", "properties", name, sorted(seen))
    return records


def _sdf_smiles(mol: Chem.Mol | None) -> str:
    """RDKit SMILES of an SDF molecule (explicit Hs removed); unsanitisable ones unsanitised."""
    if mol is None:
        return ""
    try:
        clean = Chem.Mol(mol)
        Chem.SanitizeMol(clean)
        return Chem.MolToSmiles(Chem.RemoveHs(clean))
    except Exception:  # noqa: BLE001 - RDKit raises several types; standardize reports it
        try:
            return Chem.MolToSmiles(mol, canonical=False)
        except Exception:  # noqa: BLE001
            return ""
