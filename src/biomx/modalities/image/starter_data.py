"""The image datasets `biomx datasets` lists and exports (`--name NAME --export DIR`).

- pneumoniamnist (embedded, `biomx.datasets`): its held-out split (never trained on by the demo)
  written as PNG or DICOM files, folder per class, with a CSV manifest and a README.txt
  (`export_images`). Labels go only into the manifest and the folder names.
- nuclei2d: a real fluorescence image with 125 hand-annotated nuclei (shipped in
  `biomx/datasets/nuclei_2d/`, see ATTRIBUTION.md there), cut into 2D TIFF tiles with binary
  masks in the Medical Segmentation Decathlon layout (`write_nuclei_dataset`); dataset.json is
  written last, so a folder with a dataset.json is complete.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile

from biomx.datasets import DATA_DIR, EmbeddedDataset, get_dataset
from biomx.datasets import DATASETS as EMBEDDED
from biomx.engine.checkpoint import atomic_write_bytes
from biomx.engine.logging import console
from biomx.errors import ConfigError
from biomx.modalities.common.msd_writer import (
    msd_files,
    out_folder,
    refuse_existing,
    write_dataset_json,
    written_line,
)

NUCLEI_IMAGE = DATA_DIR / "nuclei_2d" / "img2d.tif"  # 512x512 uint16 fluorescence
NUCLEI_MASK = DATA_DIR / "nuclei_2d" / "mask2d.tif"  # 512x512 uint16 instance ids (0 = background)

DATASETS: dict[str, str] = {
    **{d.name: f"{d.description}; classes: {', '.join(d.classes)}; source: {d.citation} "
               f"(--name {d.name} --export DIR [--format png|dcm] [--limit N]; writes its held-out split)"
       for d in EMBEDDED.values() if d.modality == "image"},
    "nuclei2d": "real fluorescence nuclei image (125 hand-annotated nuclei, 2018 Data Science Bowl) "
    "as 16 TIFF tiles with masks, MSD layout (--name nuclei2d --export DIR)",
}  # fmt: skip


def export_dataset(name: str, out_dir: str | Path, *, format: str | None = None, limit: int | None = None,
                   overwrite: bool = False) -> str:
    """Write dataset `name` under `out_dir`; the line to print. `format` (png or dcm, default png)
    and `limit` apply to the embedded datasets, which export their held-out split (`held_out_split`).
    Refuses (ConfigError, nothing written) when a file it would write exists, unless `overwrite`."""
    if name == "nuclei2d":
        return written_line(name, write_nuclei_dataset(out_dir, overwrite=overwrite))
    manifest = export_images(name, out_dir, format or "png", limit, overwrite=overwrite)
    return f"wrote {name} images and {manifest}"


def held_out_split(splits: list[str]) -> str:
    """The split an export writes by default: `test` if the archive has one, else `val`. The demo
    never trains on either (val only picks its best epoch), so a model tested on them is not
    tested on its own training images."""
    return "test" if "test" in splits else "val"


def _write_dicom(path: Path, pixels: np.ndarray, description: str) -> None:
    """A minimal valid DICOM secondary-capture file holding an 8-bit grey image.

    Neither the label nor a patient is written into it: the label lives only in the manifest
    and the folder name (a header field carrying it leaks the answer to anything that reads
    headers), and MedMNIST has no patient ids, so PatientID is left empty (type 2: present,
    may be empty) rather than invented.
    """
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
    ds.Modality, ds.ConversionType = "CR", "WSD"  # workstation: converted, not acquired
    ds.PatientName, ds.PatientID, ds.PatientIdentityRemoved = "", "", "YES"
    ds.BurnedInAnnotation = "NO"  # arrays from MedMNIST: no text in the pixels (biomx deid checks it)
    ds.ImageComments = description  # where the image comes from; never its label
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _readme(dataset: EmbeddedDataset, split: str, count: int) -> str:
    """README.txt of an export: what the files are, where the labels are, what patient_id is not."""
    if split == "train":
        use = "These are the images the demo trains on: a model trained on them and tested on them leaks."
    else:
        use = f"The demo never trains on the {split!r} split" + (" (it picks its best epoch on it)." if split == "val" else ".")
    return (
        f"{count} images of the {split!r} split of {dataset.name}: {dataset.description}.\n"
        f"Source: {dataset.citation}.\n{use}\n\n"
        "Labels are in manifest.csv (column label) and in the folder names, nowhere else: the image\n"
        "files (PNG pixels, DICOM headers) carry no label.\n\n"
        "MedMNIST publishes no patient ids. The patient_id column holds one placeholder per image\n"
        "(img-<split>-<index>) so that the manifest has the column your own data needs; a split\n"
        "grouped on it is a split per image and cannot keep one patient's images together. DICOM\n"
        "files leave PatientID empty.\n"
    )


def export_images(name: str, out_dir: str | Path, fmt: str = "png", limit: int | None = None,
                  split: str | None = None, *, overwrite: bool = False) -> Path:
    """Write an embedded dataset's split as files, folder-per-class, plus a CSV manifest and a README.

    Handy to try the file doors (`source: folder` / `source: csv`) on real images.

    Args:
        name: embedded dataset name.
        out_dir: destination; gets `<class>/<split>_<i>.<fmt>`, `manifest.csv` and `README.txt`.
        fmt: "png" or "dcm".
        limit: at most this many images (taken in order).
        split: "train", "val" or "test" (if the archive has it); default the held-out split
            (`held_out_split`). "train" prints a warning: the demo trains on those images.
        overwrite: replace files already there (else ConfigError naming the first, nothing written).
        instances: keep the nucleus ids (touching nuclei stay apart) instead of a binary mask.

    Returns:
        The manifest path (columns path, label, patient_id; see README.txt for patient_id).

    Raises:
        ConfigError: an unknown format or split, or a file the export would write exists.
    """
    import csv

    from PIL import Image

    if fmt not in ("png", "dcm"):
        raise ConfigError(f"--format: expected png or dcm, got {fmt!r}")
    dataset = get_dataset(name)
    with np.load(dataset.path, allow_pickle=False) as arrays:
        splits = [s for s in ("train", "val", "test") if f"{s}_images" in arrays.files]
        split = split or held_out_split(splits)
        if split not in splits:
            raise ConfigError(f"split {split!r}: {name} has the splits {', '.join(splits)}")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"][:, 0]
    if split == "train":
        console.print(f"warning: exporting the {split!r} split of {name}: these are the images the demo trains "
                      "on; a model trained on them and tested on them leaks", markup=False)  # fmt: skip
    count = len(images) if limit is None else max(0, min(limit, len(images)))
    out = Path(out_dir)
    manifest, readme = out / "manifest.csv", out / "README.txt"
    paths = [out / dataset.classes[int(labels[i])] / f"{split}_{i:05d}.{fmt}" for i in range(count)]
    refuse_existing([manifest, readme, *paths], overwrite)
    out_folder(out)
    rows = []
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            Image.fromarray(images[i]).save(path)
        else:
            _write_dicom(path, images[i], f"{dataset.name} {split} image {i} (MedMNIST; no patient ids)")
        rows.append((path.relative_to(out).as_posix(), path.parent.name, f"img-{split}-{i:05d}"))
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient_id"])
        writer.writerows(rows)
    readme.write_text(_readme(dataset, split, count))
    return manifest


def _write_tiff(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def write_nuclei_dataset(out_dir: str | Path, tile: int = 128, *, overwrite: bool = False,
                         instances: bool = False) -> Path:
    """Write the real nuclei image as non-overlapping 2D TIFF tiles in the MSD layout.

    imagesTr/nuclei_r{row}_c{col}.tif: uint16 fluorescence (values as recorded);
    labelsTr/nuclei_r{row}_c{col}.tif: uint8, 1 = nucleus (the instance mask made binary), or with
    `instances` the instance mask itself (one id per nucleus, 0 = background: detection's boxes).
    Tile (row, col) covers pixels [row * tile, (row + 1) * tile) x [col * tile, (col + 1) * tile).

    Args:
        out_dir: destination folder.
        tile: tile side in pixels; must divide 512.
        overwrite: replace files already there (else ConfigError naming the first, nothing written).
        instances: keep the nucleus ids (touching nuclei stay apart) instead of a binary mask.

    Returns:
        the dataset.json path.

    Raises:
        ConfigError: a tile size that does not divide the 512x512 image (or is below 16).
    """
    image, ids = tifffile.imread(NUCLEI_IMAGE), tifffile.imread(NUCLEI_MASK)
    if instances and ids.max() > 255:
        raise ConfigError("the nuclei instance mask has more than 255 ids")
    labels = ids.astype(np.uint8) if instances else (ids > 0).astype(np.uint8)
    height, width = image.shape
    if tile < 16 or height % tile or width % tile:
        raise ConfigError(f"tile {tile}: must be at least 16 and divide {height}x{width} (e.g. 64, 128, 256)")
    tiles = [(row, col, f"nuclei_r{row}_c{col}") for row in range(height // tile) for col in range(width // tile)]
    base = Path(out_dir)
    refuse_existing(msd_files(base, [n for *_, n in tiles], ".tif"), overwrite)
    out = out_folder(out_dir)
    names = []
    for row, col, name in tiles:
        window = (slice(row * tile, (row + 1) * tile), slice(col * tile, (col + 1) * tile))
        _write_tiff(out / "imagesTr" / f"{name}.tif", np.ascontiguousarray(image[window], dtype=np.uint16))
        _write_tiff(out / "labelsTr" / f"{name}.tif", np.ascontiguousarray(labels[window]))
        names.append(name)
    info = {
        "name": "Nuclei2DInstances" if instances else "Nuclei2D",
        "description": f"Fluorescence microscopy of cell nuclei (2018 Data Science Bowl sample, 125 "
                       f"hand-annotated nuclei) cut into {tile}x{tile} tiles; "
                       f"{'label values are nucleus ids' if instances else '1 = nucleus'}",
        "reference": "https://github.com/stardist/stardist (BSD-3-Clause)", "licence": "BSD-3-Clause",
        "release": "1.0", "tensorImageSize": "2D", "modality": {"0": "fluorescence"},
        "labels": {"0": "background", "1": "nucleus"},
    }  # fmt: skip
    return write_dataset_json(out, info, names, ".tif")
