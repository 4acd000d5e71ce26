"""The volume datasets `biomx datasets` lists and exports (`--name NAME --export DIR`)."""

from __future__ import annotations

from pathlib import Path

from biomx.errors import ConfigError

DATASETS: dict[str, str] = {
    "lesions3d": "24 synthetic CT-like volumes (NIfTI, HU) with 1-3 lesions each and their masks, "
    "MSD layout (--name lesions3d --export DIR)",
}
LESION_CASES = 24


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write dataset `name` under `out_dir`; the line to print. `format` and `limit` are not used.
    Refuses (ConfigError, nothing written) when a file it would write exists, unless `overwrite`."""
    if name not in DATASETS:
        raise ConfigError(f"--name {name!r}: volume datasets are {', '.join(DATASETS)}")
    from biomx.modalities.common.msd_writer import written_line
    from biomx.modalities.volume.lesions import write_lesion_dataset

    return written_line(name, write_lesion_dataset(out_dir, n_cases=LESION_CASES, overwrite=overwrite))
