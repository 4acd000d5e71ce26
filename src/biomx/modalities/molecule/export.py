"""A molecule run's exported graph input: the featuriser's molecule-level vector, scaled inside.

Only runs whose model reads molecule-level vectors (`models.molecule.VECTOR_MODELS`: the
fingerprint MLP and the solver models) can feed a graph: a graph network's input is a batch of
molecular graphs, not one tensor. RDKit stays outside the graph (standardisation, Morgan
fingerprints, descriptors, with the settings the sidecar's `example` states); inside, the
descriptors are imputed, standardised and clipped as `pipeline._vectors` does, in float64.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rdkit
import torch
from torch import nn

from biomx.data.samples import Samples
from biomx.errors import ExportRefused
from biomx.modalities.molecule.featurize import HUGE, descriptor_names
from biomx.modalities.molecule.pipeline import DESCRIPTOR_CLIP, read_features
from biomx.protocols import ExportPlan, GraphInput

REFUSED = ("graph networks cannot be exported: their input is a molecular graph batch, not a tensor; "
           "train a fingerprint model (e.g. fingerprint_mlp) to export")  # fmt: skip


def _sizes(preprocessing: dict[str, Any]) -> tuple[int, int]:
    """(Morgan columns, descriptor columns) of the run's vector."""
    settings = preprocessing["settings"]
    morgan = int(settings["morgan"]["size"]) if settings["morgan"] else 0
    return morgan, len(preprocessing["descriptor_mean"]) if settings["descriptors"] else 0


def raw_vectors(features: dict[str, np.ndarray], preprocessing: dict[str, Any]) -> np.ndarray:
    """Featuriser output -> the graph's raw float32 (N, Morgan + descriptors) (module docstring)."""
    settings, parts = preprocessing["settings"], []
    if settings["morgan"]:
        parts.append(np.asarray(features["morgan"], dtype=np.float32))
    if settings["descriptors"]:
        parts.append(np.asarray(features["descriptors"], dtype=np.float32))
    return np.concatenate(parts, axis=1)


class ScaleDescriptors(nn.Module):
    """Raw vectors -> the model's: Morgan columns as they are; descriptors NaN/inf -> the training
    mean, then (d - mean) / std clipped to +-DESCRIPTOR_CLIP."""

    def __init__(self, morgan: int, mean: list[float] | None, std: list[float] | None) -> None:
        super().__init__()
        self.morgan = morgan
        self.register_buffer("mean", torch.tensor(mean or [], dtype=torch.float64))
        self.register_buffer("std", torch.tensor(std or [], dtype=torch.float64))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        bits, d = raw[:, : self.morgan], raw[:, self.morgan :].double()
        d = torch.where(torch.isfinite(d), d, self.mean)
        scaled = ((d - self.mean) / self.std).clamp(-DESCRIPTOR_CLIP, DESCRIPTOR_CLIP).float()
        return torch.cat([bits.float(), scaled], dim=1)


def featuriser(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """What a client must compute, exactly as biomx computes it."""
    settings = preprocessing["settings"]
    out: dict[str, Any] = {"rdkit_version": rdkit.__version__, "standardize": preprocessing["standardize"],
                           "max_atoms": preprocessing.get("max_atoms", 1000), "morgan": None, "descriptors": None}  # fmt: skip
    if settings["morgan"]:
        m = settings["morgan"]
        out["morgan"] = {"radius": m["radius"], "size": m["size"], "counts": m["counts"],
                         "generator": f"rdFingerprintGenerator.GetMorganGenerator(radius={m['radius']}, fpSize={m['size']})."
                                      + ("GetCountFingerprintAsNumPy" if m["counts"] else "GetFingerprintAsNumPy")}  # fmt: skip
    if settings["descriptors"]:
        out["descriptors"] = {"names": descriptor_names(), "missing": f"NaN (also for |value| > {HUGE:g})",
                              "mean": preprocessing["descriptor_mean"], "std": preprocessing["descriptor_std"],
                              "clip": DESCRIPTOR_CLIP}  # fmt: skip
    return out


def _refuse_graphs(preprocessing: dict[str, Any]) -> None:
    if preprocessing.get("graph", True):
        raise ExportRefused(REFUSED)


def export_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """The featuriser's vector in, descriptor scaling inside; graph-network runs refused."""
    _refuse_graphs(preprocessing)
    morgan, n_descriptors = _sizes(preprocessing)
    parts = []
    if morgan:
        kind = "counts per bit" if preprocessing["settings"]["morgan"]["counts"] else "0/1 bits"
        parts.append(f"{morgan} Morgan fingerprint columns ({kind}, radius {preprocessing['settings']['morgan']['radius']})")
    if n_descriptors:
        parts.append(f"{n_descriptors} RDKit 2D descriptors in example.featuriser.descriptors.names order, unscaled, NaN where "
                     "RDKit gives none or the value is beyond 1e10")  # fmt: skip
    inside = [f"descriptors: NaN -> training mean, (d - mean) / std, clipped to +-{DESCRIPTOR_CLIP:g}"] if n_descriptors else [
        "none: the fingerprint goes to the model as it is"]  # fmt: skip
    return ExportPlan(
        prepare=ScaleDescriptors(morgan, preprocessing.get("descriptor_mean"), preprocessing.get("descriptor_std")),
        input=GraphInput(name="fingerprint", dtype="float32", shape=["batch", morgan + n_descriptors],
                         description="one molecule per row, featurised with RDKit from its "
                                     + ("standardised (largest fragment, neutralised) " if preprocessing["standardize"] else "")
                                     + "canonical SMILES: " + ", then ".join(parts)),  # fmt: skip
        outside="parsing and standardising each molecule and computing its fingerprint/descriptors with RDKit "
                "(example.featuriser)",
        inside=inside,
        example={"featuriser": featuriser(preprocessing)},
    )


def read_raw(preprocessing: dict[str, Any], inputs: list[str | Path],
             skip_errors: bool = False) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """Molecule files -> raw float32 vectors as the graph takes them, names, skipped molecules."""
    _refuse_graphs(preprocessing)
    features, names, invalid = read_features(preprocessing, inputs, skip_errors)
    return torch.from_numpy(raw_vectors(features, preprocessing)), names, invalid


def raw_rows(preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
    """The run's featurised molecules at `index`, as raw vectors."""
    _refuse_graphs(preprocessing)
    rows = np.asarray(index, dtype=np.int64)
    features = samples.inputs.features
    picked = {k: np.asarray(features[k])[rows] for k in ("morgan", "descriptors") if k in features}
    return torch.from_numpy(raw_vectors(picked, preprocessing))
