"""Modalities: how each kind of data is read, checked, augmented and batched.

Each modality has a low-level module (`image.py`, `sequence.py`: formats, encodings,
datasets) and a pipeline module (`image_pipeline.py`, ...) that connects it to an
experiment with the same five functions: `load`, `build_datasets`, `inference_model`,
`explain`, `read_inputs`
(molecules add `split` for scaffold and cluster splits).
"""

from __future__ import annotations

import importlib
from types import ModuleType

PIPELINES = {
    "image": "biomx.modalities.image.pipeline",
    "sequence": "biomx.modalities.sequence.pipeline",
    "molecule": "biomx.modalities.molecule.pipeline",
    "volume": "biomx.modalities.volume.pipeline",
    "segmentation": "biomx.tasks.segmentation.pipeline",  # 2D images and 3D volumes
}


def get_pipeline(modality: str, task_kind: str | None = None) -> ModuleType:
    """The pipeline module of a modality named in a config (only names listed here).

    Segmentation (of 2D images or 3D volumes) has one pipeline of its own: its samples are
    (image, mask) pairs and its outputs dense maps, whatever the modality.
    """
    return importlib.import_module(PIPELINES["segmentation" if task_kind == "segmentation" else modality])
