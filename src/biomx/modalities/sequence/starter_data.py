"""The sequence datasets `biomx datasets` lists and exports (`--name NAME --export DIR`)."""

from __future__ import annotations

from pathlib import Path

from biomx.errors import ConfigError

DATASETS: dict[str, str] = {
    "amp_vs_tm": "412 antimicrobial vs transmembrane peptides, exported from the modlamp package "
    "(--name amp_vs_tm --export DIR)",
}


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write dataset `name` under `out_dir`; the line to print. `format` and `limit` are not used.
    Refuses (ConfigError, nothing written) when the CSV exists, unless `overwrite`."""
    if name not in DATASETS:
        raise ConfigError(f"--name {name!r}: sequence datasets are {', '.join(DATASETS)}")
    return f"wrote {export_amp_vs_tm(out_dir, overwrite=overwrite)}"


def export_amp_vs_tm(out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write modlamp's antimicrobial vs transmembrane peptides (412 real sequences) as a CSV.

    Columns: id, sequence, label (AMP or TM). Needs the `modlamp` package.

    Returns:
        The CSV path (`out_dir/amp_vs_tm.csv`).
    """
    import csv

    from biomx.plugins import import_extra

    load_AMPvsTM = import_extra("modlamp.datasets", "the amp_vs_tm dataset").load_AMPvsTM
    from biomx.modalities.common.msd_writer import out_folder, refuse_existing

    path = Path(out_dir) / "amp_vs_tm.csv"
    refuse_existing([path], overwrite)
    data = load_AMPvsTM()
    out_folder(out_dir)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sequence", "label"])
        for i, (sequence, target) in enumerate(zip(data["sequences"], data["target"], strict=True)):
            writer.writerow([f"pep{i:04d}", sequence, data["target_names"][int(target)]])
    return path
