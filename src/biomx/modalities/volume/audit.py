"""What the data audit asks of volumes (`protocols.AuditsData`): a hash of the voxels for
identical volumes, a 512-bit perceptual hash of the volume resampled to 24^3 (its 8x8x8 lowest
DCT frequencies; Hamming distance <= NEAR_BITS: near-identical), and intensity and foreground
measures for outliers. An .npz holds one shape and no spacing, so neither is measured.

Why 512 bits: MedMNIST 3D volumes are mostly background, and with 64 bits most of AdrenalMNIST3D's
shapes sat within 4 bits of another; with 512 the nearest two distinct volumes are 30 bits apart
(VesselMNIST3D: 20), while noise of SD 0.02 moves a volume <= 14 bits (95th percentile)."""

from __future__ import annotations

import numpy as np

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints
from biomx.modalities.common.case_audit import spatial_fingerprints, spatial_sizes

GRID, LOW = 24, 8  # 24^3 resampled volume, its 8x8x8 lowest DCT frequencies (512 bits)
NEAR_BITS = 16


def fingerprints(samples: Samples) -> Fingerprints | None:
    return spatial_fingerprints(samples, GRID, LOW, NEAR_BITS,
                                f"{LOW**3}-bit perceptual hash of the volume at {GRID}^3", "hash of the voxels")


def describe_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    """Mean intensity, contrast, and the share of voxels above 0 (the foreground)."""
    return spatial_sizes(samples)
