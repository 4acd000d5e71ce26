"""The volume modality's config: `data.modality: volume` and its section `data.volume`."""

from __future__ import annotations

from typing import ClassVar, Literal

from biomx.config import DataConfig
from biomx.modalities.common.scan_config import ScanConfig


class VolumeSettings(ScanConfig):
    """How volumes are read, preprocessed, cached and augmented."""

    normalize: bool = True  # npz classification: standardise with the training split's statistics


class VolumeData(DataConfig):
    """`data:` for 3D volumes."""

    modality: Literal["volume"] = "volume"
    volume: VolumeSettings = VolumeSettings()

    sources: ClassVar[tuple[str, ...]] = ("npz", "msd")
    path_keys: ClassVar[tuple[str, ...]] = ("cache_dir",)
    moved: ClassVar[dict[str, str]] = {"normalize": "data.volume.normalize", "augment": "data.volume.augment"}
