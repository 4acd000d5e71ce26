"""The tables `biomx datasets` lists and exports (`--name NAME --export DIR`): real clinical data
bundled with scikit-learn and scikit-survival (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from biomx.errors import ConfigError

DATASETS: dict[str, str] = {
    "breast_cancer": "569 tumours (Wisconsin diagnostic), 30 numeric features of cell nuclei, label "
    "diagnosis (malignant/benign); sklearn.datasets.load_breast_cancer (--name breast_cancer --export DIR)",
    "gbsg2": "686 breast cancer patients (German Breast Cancer Study Group 2), 8 features, "
    "recurrence-free survival: columns time (days) and event (1 = recurrence or death); "
    "sksurv.datasets.load_gbsg2 (--name gbsg2 --export DIR)",
    "whas500": "500 heart attack patients (Worcester Heart Attack Study), 14 features, survival: "
    "columns time (days of follow-up) and event (1 = death); sksurv.datasets.load_whas500 "
    "(--name whas500 --export DIR)",
}


def _cell(value: object) -> str:
    if value is None or value != value:  # None or NaN: an empty cell
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)


def _frame(name: str) -> tuple[object, str]:
    """(a pandas DataFrame with an id column first, the id prefix)."""
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer(as_frame=True)
        frame = bunch.data.copy()
        frame["diagnosis"] = [bunch.target_names[k] for k in bunch.target]
        return frame, "bc_"
    try:
        from sksurv.datasets import load_gbsg2, load_whas500
    except ImportError:
        raise ConfigError(f"the {name} table comes from scikit-survival: pip install 'biomx[tabular]'") from None
    x, y = load_gbsg2() if name == "gbsg2" else load_whas500()
    frame = x.copy()
    event, time = ("cens", "time") if name == "gbsg2" else ("fstat", "lenfol")
    frame["time"] = y[time]
    frame["event"] = y[event].astype(int)
    return frame, f"{name}_"


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write table `name` as `out_dir/<name>.csv` (atomically; `limit`: the first rows only);
    the line to print. Refuses (ConfigError, nothing written) when the CSV exists, unless `overwrite`."""
    from biomx.modalities.common.msd_writer import out_folder, refuse_existing
    from biomx.runs import write_csv

    if name not in DATASETS:
        raise ConfigError(f"--name {name!r}: tabular datasets are {', '.join(DATASETS)}")
    if format not in (None, "csv"):
        raise ConfigError(f"--format {format!r}: tabular datasets are written as csv")
    path = Path(out_dir) / f"{name}.csv"
    refuse_existing([path], overwrite)
    frame, prefix = _frame(name)
    if limit is not None:
        frame = frame.iloc[:limit]
    columns = {"id": [f"{prefix}{i:04d}" for i in range(len(frame))]}
    for column in frame.columns:
        columns[str(column)] = [_cell(v) for v in frame[column].tolist()]
    out_folder(out_dir)
    write_csv(path, columns)
    return f"wrote {path} ({len(frame)} rows, {len(columns) - 1} columns)"
