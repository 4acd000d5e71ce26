"""The real nuclei image (embedded in biomx, 125 hand-drawn nuclei) as tiles with their INSTANCE
masks, in MONAI's Decathlon folder layout (dataset.json, imagesTr/, labelsTr/), for detection:
one box per nucleus. (`biomx datasets --name nuclei2d` writes the same tiles with binary masks, for
segmentation, where touching nuclei merge.)

    python -m biomx.tasks.detection.starter OUT_DIR [TILE]
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

from biomx.datasets import DATA_DIR
from biomx.engine.checkpoint import atomic_write_bytes, atomic_write_text
from biomx.errors import ConfigError


def _write_tiff(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def write_nuclei_instances(out_dir: str | Path, tile: int = 128) -> Path:
    """imagesTr/nuclei_r{row}_c{col}.tif (uint16, as recorded) and labelsTr/ the same tiles of the
    instance mask (uint8, one id per nucleus, 0 = background); returns the dataset.json path.

    Raises:
        ConfigError: a tile size below 32 or not dividing the 512 x 512 image.
    """
    image = tifffile.imread(DATA_DIR / "nuclei_2d" / "img2d.tif")
    instances = tifffile.imread(DATA_DIR / "nuclei_2d" / "mask2d.tif")
    height, width = image.shape
    if tile < 32 or height % tile or width % tile:
        raise ConfigError(f"tile {tile}: must be at least 32 and divide {height}x{width} (e.g. 64, 128, 256)")
    if instances.max() > 255:
        raise ConfigError("the nuclei instance mask has more than 255 ids")
    out = Path(out_dir)
    names = []
    for row in range(height // tile):
        for col in range(width // tile):
            name = f"nuclei_r{row}_c{col}"
            window = (slice(row * tile, (row + 1) * tile), slice(col * tile, (col + 1) * tile))
            _write_tiff(out / "imagesTr" / f"{name}.tif", np.ascontiguousarray(image[window], dtype=np.uint16))
            _write_tiff(out / "labelsTr" / f"{name}.tif", instances[window].astype(np.uint8))
            names.append(name)
    info = {
        "name": "Nuclei2DInstances",
        "description": f"Fluorescence microscopy of cell nuclei (2018 Data Science Bowl sample, 125 hand-annotated "
                       f"nuclei) cut into {tile}x{tile} tiles; label values are nucleus ids",
        "reference": "https://github.com/stardist/stardist (BSD-3-Clause)", "licence": "BSD-3-Clause",
        "tensorImageSize": "2D", "modality": {"0": "fluorescence"}, "labels": {"0": "background", "1": "nucleus"},
        "numTraining": len(names), "numTest": 0, "test": [],
        "training": [{"image": f"./imagesTr/{n}.tif", "label": f"./labelsTr/{n}.tif"} for n in names],
    }  # fmt: skip
    path = out / "dataset.json"
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


if __name__ == "__main__":  # pragma: no cover - a convenience for the docs' example
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m biomx.tasks.detection.starter OUT_DIR [TILE]")
    print(write_nuclei_instances(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 128))
