"""What the data audit asks of volumes (`protocols.AuditsData`): a hash of the voxels for
identical volumes, a 64-bit perceptual hash of the volume downsampled to 16^3 (its 4x4x4 lowest
DCT frequencies; Hamming distance <= NEAR_BITS: near-identical), and intensity and foreground
measures for outliers. An .npz holds one shape and no spacing, so neither is measured."""

from __future__ import annotations

import numpy as np
import torch

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints, NearVectors
from biomx.modalities.common.defaults import sample_digests
from biomx.modalities.common.perceptual_hash import (
    CHUNK,
    grey_unit,
    intensity_measures,
    perceptual_hash,
)

GRID, LOW = 16, 4  # 16^3 downsampled volume, its 4x4x4 lowest DCT frequencies (64 bits)
NEAR_BITS = 4


def fingerprints(samples: Samples) -> Fingerprints | None:
    """None for sources read lazily (segmentation cases): not cheap to compare."""
    exact = sample_digests(samples)
    if exact is None:
        return None
    bits = perceptual_hash(samples.inputs, GRID, LOW)
    near = NearVectors(bits, "hamming", NEAR_BITS, f"64-bit perceptual hash of the volume at {GRID}^3, "
                       f"Hamming distance <= {NEAR_BITS}")  # fmt: skip
    return Fingerprints(exact, "hash of the voxels", near)


def describe_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    """Mean intensity, contrast, and the share of voxels above 0 (the foreground)."""
    if not isinstance(samples.inputs, torch.Tensor):
        return None
    measures = intensity_measures(samples.inputs)
    fg = [(grey_unit(c).reshape(len(c), -1) > 0).float().mean(1).numpy() for c in samples.inputs.split(CHUNK)]
    measures["foreground share"] = np.concatenate(fg) if fg else np.zeros(0)
    return measures
