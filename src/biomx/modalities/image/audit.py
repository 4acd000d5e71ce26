"""What the data audit asks of images (`protocols.AuditsData`): a hash of the decoded pixels for
identical images, a 144-bit perceptual hash for near-identical ones (Hamming distance <=
NEAR_BITS: the same X-ray with its contrast or gamma changed or light noise added), and intensity
measures for outliers. The images are compared as loaded (after resizing to data.image.size).

Why 144 bits: on PneumoniaMNIST the usual 64-bit pHash puts different children's X-rays 2 bits
apart (chest X-rays share their low frequencies); with 12x12 frequencies the nearest two distinct
X-rays are 14 bits apart, while a contrast or gamma change moves an X-ray <= 8 bits (95th
percentile) and noise of SD 0.02 <= 16 (docs/trust.md)."""

from __future__ import annotations

import numpy as np

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints
from biomx.modalities.common.case_audit import spatial_fingerprints, spatial_sizes
from biomx.modalities.image.streaming import content_digests

GRID, LOW = 32, 12  # pHash: 32x32 grey image, its 12x12 lowest DCT frequencies (144 bits)
NEAR_BITS = 12  # at most this many of the 144 bits differ: a near duplicate


def fingerprints(samples: Samples) -> Fingerprints | None:
    """Streamed images (data.image.storage: stream): each file's sha256 for identity and no near
    vectors (a perceptual hash would decode the whole dataset in this one process)."""
    digests = content_digests(samples.inputs, samples.hashes)
    if digests is not None:
        return Fingerprints(list(digests), "sha256 of the file (streamed images: pixels not compared)")
    return spatial_fingerprints(samples, GRID, LOW, NEAR_BITS,
                                f"{LOW * LOW}-bit perceptual hash (DCT of the {GRID}x{GRID} grey image)",
                                "hash of the decoded pixels")


def describe_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    """Mean intensity, contrast and the share of pixels above 0 per image (all images share one
    size once loaded: sizes are not compared)."""
    return spatial_sizes(samples)
