"""In-memory molecules for `biomx.predictor`: SMILES strings featurised as `read_inputs` does it.

Each string is one molecule, standardised (when the run standardised its training molecules),
canonicalised and featurised with the run's settings, as the rows of a CSV or .smi file are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.errors import DataError
from biomx.modalities.molecule.featurize import featurize
from biomx.modalities.molecule.graphs import graphs_from_arrays
from biomx.modalities.molecule.pipeline import MoleculeDataset, _vectors
from biomx.modalities.molecule.standardize import standardize

# A string ending so is a file name that is not there, not a molecule (no SMILES ends in ".csv").
_FILE_SUFFIXES = (".csv", ".tsv", ".sdf", ".sd", ".smi", ".smiles", ".txt", ".gz")


def read_objects(preprocessing: dict[str, Any], objects: Any) -> tuple[MoleculeDataset, list[str]]:
    """SMILES strings -> the dataset of featurised molecules `read_inputs` makes of a file, and names.

    Raises:
        DataError: not a string (an array given to a molecule run), an invalid SMILES or one with
            more atoms than the run's max_atoms (the first one, naming it).
    """
    items = [objects] if isinstance(objects, str) else list(objects)
    names = [f"[{i}]" for i in range(len(items))]
    for name, item in zip(names, items, strict=True):
        if isinstance(item, Path) or not isinstance(item, (str, np.str_)):
            what = f"{item}: no such file" if isinstance(item, Path) else f"{name}: a {type(item).__name__}"
            raise DataError(f"{what}; a molecule run reads SMILES strings or CSV/SDF/.smi files")
        if str(item).lower().endswith(_FILE_SUFFIXES):
            raise DataError(f"{item}: no such file")
    where = [f"SMILES {name} {str(s)[:60]!r}" for name, s in zip(names, items, strict=True)]
    canonical, kept, invalid = standardize([str(s) for s in items], where, standardize=preprocessing["standardize"],
                                           max_atoms=preprocessing.get("max_atoms", 1000))  # fmt: skip
    if invalid:
        raise DataError(f"{invalid[0][0]}: {invalid[0][1]}")
    features = featurize(canonical, preprocessing["settings"], cache=None, source_digest="")
    graphs = graphs_from_arrays(features) if preprocessing["graph"] else None
    n = len(canonical)
    return MoleculeDataset(graphs, _vectors(features, preprocessing), torch.zeros(n), np.arange(n)), names
