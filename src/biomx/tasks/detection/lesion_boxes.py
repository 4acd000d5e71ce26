"""Synthetic 3D lesions with box annotations, for detection: the volume modality's CT-like lesion
dataset (`biomx.modalities.volume.lesions`, unchanged: images, masks, dataset.json) plus one box per
lesion in the two box-file layouts biomx reads (see `annotations.py`):

- boxes.csv: corners in world millimetres (RAS, the frame of biomx's volume affines), one row per
  lesion, label 0; `image` is the path relative to the dataset folder (imagesTr/lesion_000.nii.gz);
- boxes.json: MONAI's detection data list as LUNA16 is distributed (world "cccwhd" boxes in the LPS
  frame), every case under "training".

Each box is the exact extent of its lesion's voxels (the generator's own lesion ids, so two
lesions never merge into one box), [first, last + 1) in the voxels of the RAS-ordered array that
biomx reads back from the stored file, whatever orientation the file was stored in.

    python -m biomx.tasks.detection.lesion_boxes OUT_DIR [N_CASES] [SEED]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from biomx.errors import ConfigError
from biomx.modalities.volume.lesions import write_lesion_dataset
from biomx.tasks.detection.annotations import ImageGeometry, write_box_csv, write_monai_json
from biomx.tasks.detection.boxes import boxes_from_instance_mask

BOX_FILES = ("boxes.csv", "boxes.json")


def write_lesion_detection_dataset(out_dir: str | Path, n_cases: int = 24, seed: int = 0,
                                   shape: tuple[int, int, int] = (64, 64, 40), *,
                                   overwrite: bool = False) -> dict[str, Path]:
    """Write the synthetic lesion dataset with one box per lesion (boxes.csv, boxes.json).

    Args:
        out_dir, n_cases, seed, shape, overwrite: as `write_lesion_dataset` (the same volumes
            and masks, byte for byte); the box files are refused too when they exist.

    Returns:
        {"dataset": dataset.json, "csv": boxes.csv, "json": boxes.json}.
    """
    out = Path(out_dir)
    existing = [out / name for name in BOX_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]}: already exists; nothing was written (overwrite=True replaces it)")
    annotations: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    geometry: dict[str, ImageGeometry] = {}

    def collect(name: str, ids: np.ndarray, affine: np.ndarray) -> None:
        boxes, _ = boxes_from_instance_mask(ids)
        key = f"imagesTr/{name}.nii.gz"
        annotations[key] = (boxes, np.zeros(len(boxes), dtype=np.int64))
        geometry[key] = ImageGeometry(tuple(ids.shape), np.asarray(affine, dtype=np.float64))

    spec = write_lesion_dataset(out, n_cases=n_cases, seed=seed, shape=shape, overwrite=overwrite, on_case=collect)
    csv_path = write_box_csv(out / "boxes.csv", annotations, images=geometry, space="world", world_frame="RAS")
    json_path = write_monai_json(out / "boxes.json", annotations, images=geometry, world_frame="LPS")
    return {"dataset": spec, "csv": csv_path, "json": json_path}


if __name__ == "__main__":  # pragma: no cover - a convenience for the docs' example
    if not 2 <= len(sys.argv) <= 4:
        sys.exit("usage: python -m biomx.tasks.detection.lesion_boxes OUT_DIR [N_CASES] [SEED]")
    written = write_lesion_detection_dataset(sys.argv[1], *(int(a) for a in sys.argv[2:]))
    print(f"wrote {written['dataset']}, {written['csv']} and {written['json']}")
