"""What `biomx drift` measures of each molecule (`protocols.DriftStatistics`), from the raw graph
input (the run's featurisation: Morgan bits and/or RDKit descriptors): the number of Morgan bits
set, and a few interpretable RDKit descriptors (weight, logP, heavy atoms, polar surface, donors,
acceptors, rotatable bonds, rings) when the run computes descriptors. A run on Morgan bits only
has no descriptors to compare; the embedding and prediction tests still see the molecules."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.modalities.molecule.featurize import descriptor_names

SHOWN = ("MolWt", "MolLogP", "HeavyAtomCount", "TPSA", "NumHDonors", "NumHAcceptors", "NumRotatableBonds",
         "RingCount")  # fmt: skip


def input_statistics(preprocessing: dict[str, Any], raw: torch.Tensor) -> dict[str, np.ndarray]:
    """Morgan bits set per molecule; the SHOWN descriptors (NaN: not computable, left out of the test)."""
    settings = preprocessing["settings"]
    x = raw.numpy().astype(np.float64)
    morgan = int(settings["morgan"]["size"]) if settings["morgan"] else 0
    out: dict[str, np.ndarray] = {}
    if morgan:
        out["Morgan bits set"] = (x[:, :morgan] > 0).sum(axis=1).astype(np.float64)
    if settings["descriptors"]:
        names = descriptor_names()
        for name in SHOWN:
            if name in names:
                out[name] = x[:, morgan + names.index(name)]
    return out
