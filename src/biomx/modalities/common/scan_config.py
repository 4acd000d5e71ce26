"""Settings for reading scans with masks (MSD folders) and for augmenting them in 2D or 3D:
shared by the image modality (2D scans, `data.image.scan`) and the volume modality (`data.volume`)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from biomx.config import Fraction, PositiveFloat, Section


class SpatialAugmentConfig(Section):
    """Random 3D (or 2D) augmentations of training volumes and patches (off by default).

    Spatial transforms move image and mask together (the mask with nearest neighbours)."""

    flip: Fraction = 0.0  # probability of a flip, drawn per spatial axis
    rotate90: Fraction = 0.0  # probability of a quarter turn in the first two spatial axes
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0  # affine: max degrees about each axis
    scale: tuple[PositiveFloat, PositiveFloat] | None = None  # affine zoom range, e.g. [0.9, 1.1]
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # intensity shift, in std units
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # intensity scale 1 +/- this
    gamma: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # Gaussian std, in std units


class ScanConfig(Section):
    """How scans (and their masks) are read, preprocessed and cached."""

    spacing: Annotated[list[Annotated[float, Field(ge=0.01, le=100.0)]], Field(min_length=2, max_length=3)] | None = None  # resample to this voxel size (mm); None keeps it
    intensity: Literal["zscore", "ct", "minmax", "none"] = "zscore"  # ct: clip ct_window, scale
    ct_window: tuple[float, float] = (-175.0, 250.0)  # HU [low, high] for intensity: ct
    nonzero: bool = False  # zscore: statistics of non-zero voxels only (skull-stripped MR)
    crop_foreground: bool = True  # crop to the bounding box of voxels above the image minimum
    geometry_tolerance_mm: PositiveFloat = 0.01  # mask vs image origin/spacing tolerance
    nan_policy: Literal["raise", "zero"] = "raise"  # NaN voxels: an error, or set to 0
    cache: bool = True  # keep preprocessed samples on disk, keyed by content and settings
    cache_dir: str | None = None  # default: $BIOMX_CACHE or ~/.cache/biomx
    augment: SpatialAugmentConfig = SpatialAugmentConfig()

    moved: ClassVar[dict[str, str]] = {  # segmentation settings that moved to the task
        key: f"task.{key}" for key in ("patch_size", "pos_ratio", "patches_per_case", "val_patches_per_case",
                                       "overlap", "sw_batch_size")
    }  # fmt: skip
