"""The histories `biomx datasets` lists and exports (`--name NAME --export DIR`): real
longitudinal survival data bundled with SurvSet (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

from biomx.errors import ConfigError

DATASETS: dict[str, str] = {
    "aids": "467 HIV patients (ddI vs ddC trial; Abrams 1994, R package JM), CD4 counts (square root) "
    "at 0, 2, 6, 12 and 18 months, baseline drug, gender, prevOI, AZT; survival: time (months) and "
    "event (1 = death); SurvSet (--name aids --export DIR: aids_history.csv, aids_baseline.csv)",
}


def _frames(name: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(history rows: id, time, cd4; baseline rows: id, covariates, time, event)."""
    try:
        from SurvSet.data import SurvLoader
    except ImportError:
        raise ConfigError(f"the {name} histories come from SurvSet: pip install 'biomx[tabular]'") from None
    frame = SurvLoader().load_dataset(name)["df"]
    history, baseline = [], []
    # SurvSet keeps the counting-process form: one row per interval [time, time2) with the CD4
    # count measured at its start; the last interval of a patient ends at the event or censoring.
    for pid, rows in frame.groupby("pid", sort=True, observed=True):
        rows = rows.sort_values("time")
        ident = f"aids_{int(pid):04d}"
        for _, row in rows.iterrows():
            history.append({"id": ident, "time": f"{row['time']:g}", "cd4": f"{row['num_CD4']:.6g}"})
        last = rows.iloc[-1]
        baseline.append({"id": ident, "drug": str(last["fac_drug"]), "gender": str(last["fac_gender"]),
                         "prevOI": str(last["fac_prevOI"]), "AZT": str(last["fac_AZT"]),
                         "time": f"{last['time2']:g}", "event": str(int(last["event"]))})  # fmt: skip
    return history, baseline


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write `out_dir/<name>_history.csv` and `out_dir/<name>_baseline.csv` (`limit`: the first
    patients only); the line to print. Refuses (ConfigError) when they exist, unless `overwrite`."""
    from biomx.modalities.common.msd_writer import out_folder, refuse_existing
    from biomx.runs import write_csv

    if name not in DATASETS:
        raise ConfigError(f"--name {name!r}: history datasets are {', '.join(DATASETS)}")
    if format not in (None, "csv"):
        raise ConfigError(f"--format {format!r}: history datasets are written as csv")
    paths = [Path(out_dir) / f"{name}_history.csv", Path(out_dir) / f"{name}_baseline.csv"]
    refuse_existing(paths, overwrite)
    history, baseline = _frames(name)
    if limit is not None:
        baseline = baseline[:limit]
        keep = {row["id"] for row in baseline}
        history = [row for row in history if row["id"] in keep]
    out_folder(out_dir)
    for path, rows in zip(paths, (history, baseline), strict=True):
        write_csv(path, {key: [row[key] for row in rows] for key in rows[0]})
    return f"wrote {paths[0]} ({len(history)} visits) and {paths[1]} ({len(baseline)} patients)"
