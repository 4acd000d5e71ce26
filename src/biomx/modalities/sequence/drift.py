"""What `biomx drift` measures of each sequence (`protocols.DriftStatistics`), on the raw graph
input (tokens at the run's length, so a sequence longer than that counts as that length): its
length without padding, each letter's share, and the GC share of DNA/RNA."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomx.modalities.sequence.encoding import PAD, alphabet_spec


def input_statistics(preprocessing: dict[str, Any], raw: torch.Tensor) -> dict[str, np.ndarray]:
    """Length, letter composition (ambiguity codes spread over their letters), GC share."""
    spec = alphabet_spec(preprocessing["alphabet"])
    tokens = raw.long().clamp(0, 255).numpy()
    length = (tokens != PAD).sum(axis=1).astype(np.float64)
    counts = spec.onehot.T[tokens].sum(axis=1).astype(np.float64)  # (N, A): letters per sequence
    shares = counts / np.maximum(length, 1)[:, None]
    out = {"length": length}
    for k, letter in enumerate(spec.letters):
        out[f"{letter} share"] = shares[:, k]
    if set("GC") <= set(spec.letters):
        out["GC share"] = shares[:, spec.letters.index("G")] + shares[:, spec.letters.index("C")]
    return out
