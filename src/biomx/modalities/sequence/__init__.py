"""The sequence modality: DNA, RNA and protein sequences (FASTA, CSV, genomic intervals read from
an indexed genome), one-hot encoded; chromosome hold-out splits; explained with attribution
logos, recovered motifs and in-silico mutagenesis; `biomx variants` and `biomx ism`."""

from __future__ import annotations

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.data.splits import row_digests
from biomx.modalities.common.defaults import check_config
from biomx.modalities.sequence import pipeline
from biomx.modalities.sequence.arrays import read_objects
from biomx.modalities.sequence.attribution import attribution_methods
from biomx.modalities.sequence.audit import describe_sizes, fingerprints
from biomx.modalities.sequence.commands import add_commands
from biomx.modalities.sequence.config import SequenceData
from biomx.modalities.sequence.drift import input_statistics
from biomx.modalities.sequence.export import export_plan, raw_rows, read_raw
from biomx.modalities.sequence.pipeline import (
    build_datasets,
    explain,
    inference_model,
    read_inputs,
    split,
)
from biomx.modalities.sequence.starter_data import DATASETS as datasets
from biomx.modalities.sequence.starter_data import export_dataset

name = "sequence"
config = SequenceData
sources = config.sources
split_methods = config.split_methods
input_help = "FASTA/CSV sequences"


def load(cfg: ExperimentConfig) -> Samples:
    return pipeline.load(cfg.data, getattr(cfg.task, "classes", None))


def sample_digests(samples: Samples) -> list[str] | None:
    """A content hash per sequence (its padded token row), for the duplicates-across-splits check."""
    tokens = getattr(samples.inputs, "tokens", None)
    return row_digests(tokens) if tokens is not None and len(tokens) == len(samples.ids) else None


__all__ = ["attribution_methods", "describe_sizes", "fingerprints", "input_statistics", "name", "config", "sources", "split_methods", "input_help", "check_config", "load", "split", "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "read_objects", "export_plan", "read_raw", "raw_rows", "add_commands", "datasets", "export_dataset"]
