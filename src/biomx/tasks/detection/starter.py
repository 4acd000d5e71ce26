"""The real nuclei image (embedded in biomx, 125 hand-drawn nuclei) as tiles with their INSTANCE
masks, in MONAI's Decathlon folder layout (dataset.json, imagesTr/, labelsTr/), for detection:
one box per nucleus. (`biomx datasets --name nuclei2d` writes the same tiles with binary masks, for
segmentation, where touching nuclei merge.)

    python -m biomx.tasks.detection.starter OUT_DIR [TILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

from biomx.errors import ConfigError
from biomx.modalities.image.starter_data import write_nuclei_dataset


def write_nuclei_instances(out_dir: str | Path, tile: int = 128) -> Path:
    """imagesTr/nuclei_r{row}_c{col}.tif (uint16, as recorded) and labelsTr/ the same tiles of the
    instance mask (uint8, one id per nucleus, 0 = background); returns the dataset.json path.
    Files already there are replaced. The tiles are the image modality's (`write_nuclei_dataset`).

    Raises:
        ConfigError: a tile size below 32 or not dividing the 512 x 512 image.
    """
    if tile < 32 or 512 % tile:  # detection needs room for anchors: a larger minimum than segmentation's 16
        raise ConfigError(f"tile {tile}: must be at least 32 and divide 512x512 (e.g. 64, 128, 256)")
    return write_nuclei_dataset(out_dir, tile, overwrite=True, instances=True)


if __name__ == "__main__":  # pragma: no cover - a convenience for the docs' example
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m biomx.tasks.detection.starter OUT_DIR [TILE]")
    print(write_nuclei_instances(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 128))
