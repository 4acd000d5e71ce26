"""The volume modality's config: `data.modality: volume` and its section `data.volume`."""

from __future__ import annotations

from typing import ClassVar, Literal

from biomx.config import DataConfig, PositiveInt
from biomx.modalities.common.scan_config import ScanConfig

# 512 x 512 x 1024 voxels: a large CT (1 GiB as float32). A file whose header asks for more is
# refused before any voxel is read: decoders allocate the declared size (and copy it once or twice).
DEFAULT_MAX_VOXELS = 512 * 512 * 1024


class VolumeSettings(ScanConfig):
    """How volumes are read, preprocessed, cached and augmented."""

    normalize: bool = True  # npz classification: standardise with the training split's statistics
    max_voxels: PositiveInt = DEFAULT_MAX_VOXELS  # the most voxels (times channels) a volume file may declare
    # npz classification: "memory" holds every volume in one tensor; "stream" extracts them once, row by row,
    # into an on-disk row store and reads each batch from there (docs/large_data.md); "auto": stream above 2 GiB.
    storage: Literal["auto", "memory", "stream"] = "auto"


class VolumeData(DataConfig):
    """`data:` for 3D volumes."""

    modality: Literal["volume"] = "volume"
    volume: VolumeSettings = VolumeSettings()

    sources: ClassVar[tuple[str, ...]] = ("npz", "msd")
    path_keys: ClassVar[tuple[str, ...]] = ("cache_dir",)
    moved: ClassVar[dict[str, str]] = {"normalize": "data.volume.normalize", "augment": "data.volume.augment"}
