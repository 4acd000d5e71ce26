"""The tabular modality: clinical tables (one row per patient; labs, vitals, demographics with
missing values and categorical codes) from CSV, TSV or Parquet; an encoding fitted on the
training split only (imputation, missingness indicators, standardisation, categorical levels);
a LightGBM baseline beside the network in the report; per-column attributions. See docs/tabular.md."""

from __future__ import annotations

from biomx.modalities.common.defaults import add_commands, check_config, split
from biomx.modalities.tabular.arrays import read_objects
from biomx.modalities.tabular.attribution import attribution_methods
from biomx.modalities.tabular.audit import describe_sizes, fingerprints, missing_values
from biomx.modalities.tabular.config import TabularData
from biomx.modalities.tabular.drift import input_statistics
from biomx.modalities.tabular.explain import explain
from biomx.modalities.tabular.export import export_plan, raw_rows, read_raw
from biomx.modalities.tabular.pipeline import (
    build_datasets,
    inference_model,
    load,
    read_inputs,
    sample_digests,
)
from biomx.modalities.tabular.starter_data import DATASETS as datasets
from biomx.modalities.tabular.starter_data import export_dataset
from biomx.modalities.tabular.subgroups import subgroup_table

name = "tabular"
config = TabularData
sources = config.sources
split_methods = config.split_methods
input_help = "CSV/TSV/Parquet tables with the run's feature columns (one prediction per row)"

__all__ = ["attribution_methods", "describe_sizes", "fingerprints", "input_statistics", "missing_values", "name", "config", "sources", "split_methods", "input_help", "check_config", "load", "split",
           "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "read_objects", "export_plan", "read_raw",
           "raw_rows", "add_commands", "subgroup_table",
           "datasets", "export_dataset"]  # fmt: skip
