"""The data audit on the cases of a paired (image/mask) source, which stay in the case cache:
each case's preprocessed image hashed for identity and perceptually for near-identity, and its
geometry (size and spacing per axis, as read from the file) as outlier measures. Shared by the
image and volume modalities, with `spatial_fingerprints` and `spatial_sizes` for loaded tensors."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from biomx.data.cache import ArrayCache
from biomx.data.cases import CaseInputs
from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints, NearVectors
from biomx.modalities.common.defaults import sample_digests
from biomx.modalities.common.perceptual_hash import intensity_measures, perceptual_hash


def case_fingerprints(samples: Samples, grid: int, low: int, near_bits: int) -> Fingerprints | None:
    """None unless the samples are cached cases (`CaseInputs`)."""
    inputs = samples.inputs
    if not isinstance(inputs, CaseInputs) or not inputs.cases:
        return None
    store = ArrayCache(inputs.root)
    exact, bits = [], []
    for case in inputs.cases:
        image = np.array(store.get(case.key)["image"], dtype=np.float32)  # (C, *spatial), a writable copy
        exact.append(hashlib.blake2b(str(image.shape).encode() + image.tobytes(), digest_size=16).hexdigest())
        bits.append(perceptual_hash(torch.from_numpy(image[None]), grid, low)[0])
    vectors = np.stack(bits)
    near = NearVectors(vectors, "hamming", near_bits, f"{vectors.shape[1]}-bit perceptual hash of each preprocessed "
                       f"case at {grid} per axis, Hamming distance <= {near_bits}")  # fmt: skip
    return Fingerprints(exact, "hash of the preprocessed case image", near)


def case_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    """Size and spacing per axis of each case's source scan (its geometry record)."""
    inputs = samples.inputs
    if not isinstance(inputs, CaseInputs) or not inputs.cases:
        return None
    shapes = np.array([c.geometry["shape"] for c in inputs.cases], dtype=np.float64)
    spacings = np.array([c.geometry["spacing"] for c in inputs.cases], dtype=np.float64)
    measures = {f"axis {k + 1} size": shapes[:, k] for k in range(shapes.shape[1])}
    measures.update({f"axis {k + 1} spacing (mm)": spacings[:, k] for k in range(spacings.shape[1])})
    return measures


def spatial_fingerprints(samples: Samples, grid: int, low: int, near_bits: int, near_text: str,
                         exact_text: str) -> Fingerprints | None:
    """Loaded images or volumes: a hash of their values for identity and a perceptual hash
    (`grid` per axis, `low` frequencies per axis) for near-identity; cached cases as above."""
    exact = sample_digests(samples)
    if exact is None:  # the cases of a paired source, in the case cache
        return case_fingerprints(samples, grid, low, near_bits)
    bits = perceptual_hash(samples.inputs, grid, low)
    near = NearVectors(bits, "hamming", near_bits, f"{near_text}, Hamming distance <= {near_bits}")
    return Fingerprints(exact, exact_text, near)


def spatial_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    """Loaded tensors: mean intensity, contrast and the share above 0; cached cases: their geometry."""
    if not isinstance(samples.inputs, torch.Tensor):
        return case_sizes(samples)  # a paired source's cases: size and spacing of each source scan
    return intensity_measures(samples.inputs)
