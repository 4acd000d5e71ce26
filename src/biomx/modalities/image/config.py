"""The image modality's config: `data.modality: image` and its section `data.image`."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from biomx.config import DataConfig, Fraction, PositiveFloat, Section
from biomx.modalities.common.scan_config import ScanConfig

ImageSide = Annotated[int, Field(gt=0, le=4096)]  # pixels: bounded, so a typo cannot ask for 40 GB


class AugmentConfig(Section):
    """Random augmentations applied to each training batch (off by default)."""

    hflip: Fraction = 0.0  # probability
    vflip: Fraction = 0.0
    rotate: Annotated[float, Field(ge=0.0, le=180.0)] = 0.0  # max degrees
    scale: tuple[PositiveFloat, PositiveFloat] | None = None  # e.g. [0.9, 1.1]
    translate: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0  # fraction of the image size
    brightness: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    contrast: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    gamma: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # Gaussian std on [0, 1] intensities


class ImageSettings(Section):
    """How 2D images are decoded, resized, normalised and augmented."""

    size: tuple[ImageSide, ImageSide] | None = None  # [H, W]; None keeps the npz size
    channels: Literal[1, 3] = 1
    window: tuple[float, PositiveFloat] | None = None  # DICOM VOI window [center, width]
    dicom_frames: Literal["first", "all"] = "first"
    nan_policy: Literal["raise", "zero"] = "raise"  # NaN/infinite pixels (float TIFF, DICOM, NIfTI): refuse or zero
    # Pixels a file's header may declare (DICOM: rows x columns x frames read), checked before decoding,
    # so a corrupt or hostile header cannot ask for gigabytes. Same value as common.planar.DEFAULT_MAX_PIXELS.
    max_pixels: Annotated[int, Field(gt=0)] = 100_000_000
    path_column: str = "path"  # csv source: the column of image files
    normalize: bool = True  # standardise with the training split's mean and std
    cache: bool = True  # image files: keep decoded images on disk, keyed by content and settings
    # Image files (folder, csv, shards): "memory" decodes every image up front into one tensor; "stream" decodes
    # each image when a batch first needs it (DataLoader workers) into an on-disk row store and reads rows
    # back from there (docs/large_data.md); "auto": stream when the decoded images would exceed 2 GiB.
    storage: Literal["auto", "memory", "stream"] = "auto"
    augment: AugmentConfig = AugmentConfig()
    # Test-time augmentation for classification/regression: predictions average over these flips
    # of each image (every combination), at evaluation, predict, serve and export alike.
    tta: list[Literal["hflip", "vflip"]] = []
    scan: ScanConfig = ScanConfig()  # source msd: image/mask pairs read as 2D scans (segmentation)


class ImageData(DataConfig):
    """`data:` for 2D images."""

    modality: Literal["image"] = "image"
    image: ImageSettings = ImageSettings()

    sources: ClassVar[tuple[str, ...]] = ("folder", "csv", "shards", "npz", "dataset", "msd")
    local_sources: ClassVar[tuple[str, ...]] = ("dataset",)
    path_keys: ClassVar[tuple[str, ...]] = ("scan.cache_dir",)
    moved: ClassVar[dict[str, str]] = {
        key: f"data.image.{new}" for key, new in {
            "image_size": "size", "channels": "channels", "window": "window", "dicom_frames": "dicom_frames",
            "path_column": "path_column", "normalize": "normalize", "cache": "cache", "augment": "augment",
            "volume": "scan"}.items()
    }  # fmt: skip

    @model_validator(mode="after")
    def _size_for_files(self) -> ImageData:
        if self.source in ("folder", "csv", "shards") and self.image.size is None:
            raise ValueError("image.size is required for folder, csv and shards sources, e.g. [224, 224]")
        return self
