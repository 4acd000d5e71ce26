"""The history modality: patient histories (repeated visits or measurements at irregular times)
from a long or wide table, joined to a baseline table of static covariates and labels; visit
times kept as features, forward-filled values with measured-at-this-visit indicators, per-variable
standardisation fitted on the training patients; landmarking for dynamic prediction. See
docs/history.md."""

from __future__ import annotations

from biomx.modalities.common.defaults import add_commands, check_config, split
from biomx.modalities.history.attribution import attribution_methods
from biomx.modalities.history.audit import describe_sizes, fingerprints, missing_values
from biomx.modalities.history.config import HistoryData
from biomx.modalities.history.explain import explain
from biomx.modalities.history.export import export_plan, raw_rows, read_raw
from biomx.modalities.history.pipeline import (
    build_datasets,
    inference_model,
    load,
    read_inputs,
    sample_digests,
)
from biomx.modalities.history.starter_data import DATASETS as datasets
from biomx.modalities.history.starter_data import export_dataset

name = "history"
config = HistoryData
sources = config.sources
split_methods = config.split_methods
input_help = "history tables (the run's id, time and variables) of patients in the run's baseline table"



__all__ = ["attribution_methods", "describe_sizes", "fingerprints", "missing_values", "name", "config", "sources", "split_methods", "input_help", "check_config", "load", "split",
           "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "export_plan", "read_raw", "raw_rows",
           "add_commands",
           "datasets", "export_dataset"]  # fmt: skip
