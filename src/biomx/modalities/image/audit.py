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
import torch

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints, NearVectors
from biomx.modalities.common.case_audit import case_fingerprints, case_sizes
from biomx.modalities.common.defaults import sample_digests
from biomx.modalities.common.perceptual_hash import intensity_measures, perceptual_hash

GRID, LOW = 32, 12  # pHash: 32x32 grey image, its 12x12 lowest DCT frequencies (144 bits)
NEAR_BITS = 12  # at most this many of the 144 bits differ: a near duplicate


def fingerprints(samples: Samples) -> Fingerprints | None:
    exact = sample_digests(samples)
    if exact is None:  # the cases of a paired source, in the case cache
        return case_fingerprints(samples, GRID, LOW, NEAR_BITS)
    bits = perceptual_hash(samples.inputs, GRID, LOW)
    near = NearVectors(bits, "hamming", NEAR_BITS, f"{LOW * LOW}-bit perceptual hash (DCT of the {GRID}x{GRID} grey image), "
                       f"Hamming distance <= {NEAR_BITS}")  # fmt: skip
    return Fingerprints(exact, "hash of the decoded pixels", near)


def describe_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    """Mean intensity, contrast and the share of pixels above 0 per image (all images share one
    size once loaded: sizes are not compared)."""
    if not isinstance(samples.inputs, torch.Tensor):
        return case_sizes(samples)  # a paired source's cases: size and spacing of each source scan
    return intensity_measures(samples.inputs)
