"""The molecule modality: SMILES tables and SDF files, standardised with RDKit and featurised as
graphs, Morgan fingerprints and descriptors; scaffold and cluster splits; explained with atom
attributions."""

from __future__ import annotations

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.modalities.common.defaults import add_commands, check_config
from biomx.modalities.molecule import pipeline
from biomx.modalities.molecule.arrays import read_objects
from biomx.modalities.molecule.attribution import attribution_methods
from biomx.modalities.molecule.audit import describe_sizes, fingerprints
from biomx.modalities.molecule.config import MoleculeData
from biomx.modalities.molecule.drift import input_statistics
from biomx.modalities.molecule.export import export_plan, raw_rows, read_raw
from biomx.modalities.molecule.pipeline import (
    build_datasets,
    explain,
    inference_model,
    read_inputs,
    split,
)
from biomx.modalities.molecule.starter_data import DATASETS as datasets
from biomx.modalities.molecule.starter_data import export_dataset

name = "molecule"
config = MoleculeData
sources = config.sources
split_methods = config.split_methods
input_help = "CSV/SDF/.smi molecules, or - for SMILES on standard input"


def load(cfg: ExperimentConfig) -> Samples:
    return pipeline.load(cfg.data, getattr(cfg.task, "classes", None))


def sample_digests(samples: Samples) -> list[str] | None:
    """The canonical SMILES of each molecule, for the duplicates-across-splits check."""
    smiles = getattr(samples.inputs, "smiles", None)
    return list(smiles) if smiles is not None and len(smiles) == len(samples.ids) else None


__all__ = ["attribution_methods", "describe_sizes", "fingerprints", "input_statistics", "name", "config", "sources", "split_methods", "input_help", "check_config", "load", "split", "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "read_objects", "export_plan", "read_raw", "raw_rows", "add_commands", "datasets", "export_dataset"]
