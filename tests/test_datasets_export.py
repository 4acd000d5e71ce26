"""`biomx datasets --export` of the embedded PneumoniaMNIST: the held-out split by default, a
warning when the training split is asked for, labels only in manifest.csv and the folder
names (never in a DICOM header), and no invented patients."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from biomx.datasets import get_dataset
from biomx.errors import ConfigError
from biomx.modalities.image.decode import read_image
from biomx.modalities.image.sources import records_from_csv
from biomx.modalities.image.starter_data import export_dataset, export_images, held_out_split

CLASSES = ("normal", "pneumonia")


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _split(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(get_dataset("pneumoniamnist").path) as arrays:
        return arrays[f"{name}_images"], arrays[f"{name}_labels"][:, 0]


def test_the_default_is_the_held_out_split_without_a_warning(tmp_path, capsys):
    assert held_out_split(["train", "val"]) == "val" and held_out_split(["train", "val", "test"]) == "test"
    line = export_dataset("pneumoniamnist", tmp_path, limit=12)
    assert line == f"wrote pneumoniamnist images and {tmp_path / 'manifest.csv'}"
    assert "warning" not in capsys.readouterr().err
    images, labels = _split("val")
    rows = _rows(tmp_path)
    assert [r["path"] for r in rows] == [f"{CLASSES[labels[i]]}/val_{i:05d}.png" for i in range(12)]
    assert [r["label"] for r in rows] == [Path(r["path"]).parent.name for r in rows]  # label = folder
    for i in (0, 11):
        np.testing.assert_allclose(read_image(tmp_path / rows[i]["path"])[0], images[i] / 255, atol=1e-6)
    readme = (tmp_path / "README.txt").read_text()
    assert "12 images of the 'val' split" in readme and "MedMNIST publishes no patient ids" in readme
    assert "never trains on" in readme


def test_exporting_the_training_split_warns_once(tmp_path, capsys):
    export_images("pneumoniamnist", tmp_path, "png", limit=3, split="train")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ")
    assert "these are the images the demo trains on; a model trained on them and tested on them leaks" in err[0]
    assert [r["path"].split("/")[1] for r in _rows(tmp_path)] == ["train_00000.png", "train_00001.png", "train_00002.png"]
    assert "leaks" in (tmp_path / "README.txt").read_text()


def test_an_unknown_split_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="split 'test': pneumoniamnist has the splits train, val$"):
        export_images("pneumoniamnist", tmp_path, "png", split="test")
    assert not any(tmp_path.iterdir())


def test_dicom_headers_carry_no_label_and_no_invented_patient(tmp_path):
    export_images("pneumoniamnist", tmp_path, "dcm", limit=20)
    images, labels = _split("val")
    rows = _rows(tmp_path)
    assert {r["label"] for r in rows} == set(CLASSES)  # both classes among the 20
    assert len({r["patient_id"] for r in rows}) == 20 and all(r["patient_id"].startswith("img-val-") for r in rows)
    headers = set()
    for i, row in enumerate(rows):
        ds = pydicom.dcmread(tmp_path / row["path"])
        assert row["label"] == CLASSES[labels[i]]
        np.testing.assert_array_equal(ds.pixel_array, images[i])
        assert ds.PatientID == "" and ds.PatientIdentityRemoved == "YES"
        assert "StudyDescription" not in ds and "SeriesDescription" not in ds
        assert ds.ImageComments == f"pneumoniamnist val image {i} (MedMNIST; no patient ids)"
        # Apart from its own UID and index, every header is the same: nothing in it follows the label.
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2"
        ds.ImageComments = ds.ImageComments.replace(f" {i} ", " # ")
        header = str([(e.tag, str(e.value)) for e in [*ds.file_meta, *ds]
                      if e.keyword not in ("PixelData", "FileMetaInformationGroupLength")])  # the latter: UID length
        assert "normal" not in header.lower()
        headers.add(header)
    assert len(headers) == 1
    records = records_from_csv(tmp_path / "manifest.csv")  # the file door reads the export back
    assert records.labels == [r["label"] for r in rows] and len(records) == 20


def test_the_moleculeace_set_exports_with_pki_cliffs_and_its_own_split(tmp_path):
    """chembl2147_ki (MoleculeACE, embedded): every molecule, pKi = 9 - log10(Ki/nM), the
    published cliff flags, MoleculeACE's test set and a 10% val carved from its train."""
    from biomx.modalities.molecule.starter_data import DATASETS as MOLECULE_DATASETS
    from biomx.modalities.molecule.starter_data import export_dataset as export_molecule_dataset

    assert "chembl2147_ki" in MOLECULE_DATASETS
    path = tmp_path / "chembl2147_ki.csv"
    assert export_molecule_dataset("chembl2147_ki", tmp_path) == f"wrote {path}"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "smiles", "pKi", "Ki_nM", "cliff_mol", "split"]
        rows = list(reader)
    assert len(rows) == 1456 and len({r["id"] for r in rows}) == 1456 and len({r["smiles"] for r in rows}) == 1456
    splits = [r["split"] for r in rows]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (1046, 116, 294)
    assert sum(r["cliff_mol"] == "1" for r in rows) == 572 and {r["cliff_mol"] for r in rows} == {"0", "1"}
    pki = np.array([float(r["pKi"]) for r in rows])
    np.testing.assert_allclose(pki, 9 - np.log10([float(r["Ki_nM"]) for r in rows]), atol=1e-3)
    assert 4.0 <= pki.min() and pki.max() <= 11.0
    with pytest.raises(ConfigError, match="already exists"):
        export_molecule_dataset("chembl2147_ki", tmp_path)
    with pytest.raises(ConfigError, match="--format 'sdf': molecule datasets are written as csv"):
        export_molecule_dataset("chembl2147_ki", tmp_path / "sdf", format="sdf")
    export_molecule_dataset("chembl2147_ki", tmp_path, limit=10, overwrite=True)
    with open(path, newline="") as f:
        assert [r["id"] for r in csv.DictReader(f)] == [r["id"] for r in rows[:10]]


def test_the_moleculeace_copy_matches_the_published_set(tmp_path):
    """Against MoleculeACE's own CSV (when the package is installed): the same molecules, values,
    cliff flags and test set, in its order; val only takes training molecules."""
    import importlib.util

    pd = pytest.importorskip("pandas")
    spec = importlib.util.find_spec("MoleculeACE")  # the data file only (importing it needs more packages)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("MoleculeACE is not installed")
    benchmark = Path(spec.submodule_search_locations[0]) / "Data" / "benchmark_data" / "CHEMBL2147_Ki.csv"
    from biomx.modalities.molecule.starter_data import export_molecules

    ours = pd.read_csv(export_molecules("chembl2147_ki", tmp_path))
    theirs = pd.read_csv(benchmark)
    assert ours["smiles"].tolist() == theirs["smiles"].tolist()
    np.testing.assert_allclose(ours["pKi"], 9 + theirs["y"], atol=1e-4)
    assert ours["cliff_mol"].tolist() == theirs["cliff_mol"].tolist()
    assert ((ours["split"] == "test") == (theirs["split"] == "test")).all()
    assert (theirs["split"][ours["split"] == "val"] == "train").all()
