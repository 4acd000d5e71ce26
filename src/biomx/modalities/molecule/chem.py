"""The molecule data API in one namespace, for `from biomx.modalities.molecule import chem as mol`.

Only re-exports: the code lives in `readers` (CSV/TSV and SDF files), `standardize` (RDKit
clean-up), `graphs` (graph arrays and batches), `featurize` (fingerprints, descriptors, the
cached `featurize`), `splits` (scaffold and cluster splits) and `parallel` (worker processes).
New code imports from those modules; this one goes once nothing uses the `mol.` namespace.
"""

from __future__ import annotations

from biomx.modalities.molecule.featurize import (
    FEATURE_VERSION,
    HUGE,
    descriptor_names,
    featurize,
    morgan_fingerprints,
    rdkit_descriptors,
)
from biomx.modalities.molecule.graphs import (
    ATOM_DIM,
    BOND_DIM,
    ELEMENTS,
    MolGraphs,
    featurize_graphs,
    graph_batch,
    graphs_from_arrays,
)
from biomx.modalities.molecule.parallel import PARALLEL_MIN, default_workers
from biomx.modalities.molecule.readers import MoleculeRecords, read_molecule_table, read_sdf
from biomx.modalities.molecule.splits import (
    BUTINA_MAX,
    cluster_split,
    murcko_scaffold,
    scaffold_overlap,
    scaffold_split,
)
from biomx.modalities.molecule.standardize import standardize

__all__ = [
    "ATOM_DIM",
    "BOND_DIM",
    "BUTINA_MAX",
    "ELEMENTS",
    "FEATURE_VERSION",
    "HUGE",
    "PARALLEL_MIN",
    "MolGraphs",
    "MoleculeRecords",
    "cluster_split",
    "default_workers",
    "descriptor_names",
    "featurize",
    "featurize_graphs",
    "graph_batch",
    "graphs_from_arrays",
    "morgan_fingerprints",
    "murcko_scaffold",
    "rdkit_descriptors",
    "read_molecule_table",
    "read_sdf",
    "scaffold_overlap",
    "scaffold_split",
    "standardize",
]
