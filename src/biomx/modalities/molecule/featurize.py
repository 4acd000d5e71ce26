"""Molecule features, all numpy and computed once per dataset (`featurize`, cached on disk).

- graphs (`molecule.graphs.featurize_graphs`) for the GNNs;
- Morgan fingerprints (bits or counts) and all RDKit 2D descriptors as molecule vectors.
  Descriptors that overflow are NaN here; the pipeline imputes the train mean and
  standardises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from typing import Any

import numpy as np
import rdkit
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from rdkit.rdBase import BlockLogs

from biomx.data.cache import ArrayCache, cache_key
from biomx.engine.logging import console
from biomx.errors import ConfigError
from biomx.modalities.molecule.graphs import featurize_graphs
from biomx.modalities.molecule.parallel import default_workers, map_chunks
from biomx.modalities.molecule.standardize import mol_from_smiles

FEATURE_VERSION = 1  # bump when a featuriser changes: old cache entries become misses

HUGE = 1e10  # descriptor values beyond this (e.g. Ipc of large molecules) become NaN


def _morgan_chunk(smiles: list[str], radius: int, size: int, counts: bool) -> np.ndarray:
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=size)
    out = np.zeros((len(smiles), size), dtype=np.float32)
    for i, s in enumerate(smiles):
        mol = mol_from_smiles(s)
        if counts:
            out[i] = generator.GetCountFingerprintAsNumPy(mol)
        else:
            out[i] = generator.GetFingerprintAsNumPy(mol)
    return out


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, size: int = 2048,
                        counts: bool = False, workers: int = 1) -> np.ndarray:
    """(N, size) float32 Morgan (ECFP-like) fingerprints: 0/1 bits, or counts per bit."""
    chunk = partial(_morgan_chunk, radius=radius, size=size, counts=counts)
    parts = map_chunks(chunk, smiles, workers)
    return np.concatenate(parts) if parts else np.zeros((0, size), np.float32)


def descriptor_names() -> list[str]:
    """Names of the columns of `rdkit_descriptors` (all RDKit 2D descriptors, RDKit's order)."""
    return [name for name, _ in Descriptors._descList]


def _descriptor_chunk(smiles: list[str]) -> np.ndarray:
    names = descriptor_names()
    out = np.full((len(smiles), len(names)), np.nan, dtype=np.float64)
    with BlockLogs():
        for i, s in enumerate(smiles):
            values = Descriptors.CalcMolDescriptors(mol_from_smiles(s), missingVal=np.nan, silent=True)
            out[i] = [values.get(name, np.nan) for name in names]
    out[~np.isfinite(out) | (np.abs(out) > HUGE)] = np.nan
    return out.astype(np.float32)


def rdkit_descriptors(smiles: Sequence[str], workers: int = 1) -> np.ndarray:
    """(N, D) float32 RDKit 2D descriptors (`descriptor_names()`).

    A descriptor RDKit cannot compute, or one that is infinite or beyond HUGE, is NaN: the
    pipeline imputes it with the training split's mean and standardises every column with the
    training split's statistics.
    """
    parts = map_chunks(_descriptor_chunk, smiles, workers)
    return np.concatenate(parts) if parts else np.zeros((0, len(descriptor_names())), np.float32)


def _check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - {"graph", "morgan", "descriptors"}
    if unknown:
        raise ConfigError(f"molecule features: unknown setting {sorted(unknown)[0]!r} "
                          "(expected graph, morgan, descriptors)")
    morgan = settings.get("morgan")
    if morgan is not None:
        morgan = {"radius": int(morgan.get("radius", 2)), "size": int(morgan.get("size", 2048)),
                  "counts": bool(morgan.get("counts", False))}
    return {"graph": bool(settings.get("graph", True)), "morgan": morgan,
            "descriptors": bool(settings.get("descriptors", False))}


def featurize(smiles: Sequence[str], settings: dict[str, Any], cache: ArrayCache | None = None,
              source_digest: str = "", workers: int | None = None) -> dict[str, np.ndarray]:
    """Every requested feature of `smiles`, computed once and then read from `cache`.

    Args:
        smiles: standardised SMILES (the output of `standardize`).
        settings: {"graph": bool, "morgan": {"radius", "size", "counts"} or None,
            "descriptors": bool}.
        cache: where to keep the arrays (None: always compute). The key covers the source
            file's digest, the SMILES, the settings, FEATURE_VERSION and the RDKit version.
        workers: featurisation processes for large inputs (None: `default_workers()`).

    Returns:
        Arrays by name: atom_features, bond_features, edge_index, atom_ptr, edge_ptr (graph),
        morgan, descriptors. From the cache they are read-only memory maps.
    """
    settings = _check_settings(settings)
    workers = default_workers() if workers is None else workers
    digest = hashlib.sha256("\n".join(smiles).encode()).hexdigest()
    key = cache_key("molecule-features", FEATURE_VERSION, rdkit.__version__, source_digest,
                    digest, settings)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit
    arrays: dict[str, np.ndarray] = {}
    if settings["graph"]:
        arrays.update(asdict(featurize_graphs(smiles, workers)))
    if settings["morgan"]:
        arrays["morgan"] = morgan_fingerprints(smiles, **settings["morgan"], workers=workers)
    if settings["descriptors"]:
        arrays["descriptors"] = rdkit_descriptors(smiles, workers)
    if cache is not None:
        try:
            cache.put(key, arrays, meta={"molecules": len(smiles), "settings": settings,
                                         "rdkit": rdkit.__version__})  # fmt: skip
        except OSError as e:
            console.print(f"[yellow]warning: cannot write the feature cache {cache.root}: {e}[/]")
    return arrays
