"""The image modality: 2D images (PNG, JPEG, TIFF, DICOM, NIfTI slices; folders, CSV manifests,
.npz arrays, embedded datasets) for classification and regression, and, read from MSD folders,
for segmentation. Explained with Grad-CAM."""

from __future__ import annotations

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.modalities.common import defaults
from biomx.modalities.common.defaults import check_config, split
from biomx.modalities.common.scan_config import ScanConfig
from biomx.modalities.image import pipeline
from biomx.modalities.image.arrays import read_objects, scan_from_array
from biomx.modalities.image.attribution import attribution_methods
from biomx.modalities.image.audit import describe_sizes, fingerprints
from biomx.modalities.image.card import data_card
from biomx.modalities.image.commands import add_commands
from biomx.modalities.image.config import ImageData
from biomx.modalities.image.drift import input_statistics
from biomx.modalities.image.export import explain_inputs, export_plan, raw_rows
from biomx.modalities.image.pipeline import (
    build_datasets,
    explain,
    inference_model,
    read_inputs,
    read_raw,
)
from biomx.modalities.image.scans import (
    collect_scans,
    mask_suffix,
    pair_sources,
    read_pair,
    read_pairs,
    read_scan,
    scan_reference,
    scan_stem,
    write_mask,
)
from biomx.modalities.image.starter_data import DATASETS as datasets
from biomx.modalities.image.starter_data import export_dataset
from biomx.modalities.image.streaming import content_digests
from biomx.modalities.image.subgroups import subgroup_table

name = "image"
config = ImageData
sources = config.sources
split_methods = config.split_methods
spatial_dims = 2  # segmentation labels its pixels
input_help = "image files or folders (PNG, JPEG, TIFF, DICOM, NIfTI)"


def load(cfg: ExperimentConfig) -> Samples:
    return pipeline.load(cfg.data, getattr(cfg.task, "classes", None))


def sample_digests(samples: Samples) -> list[str] | None:
    """A content hash per row; streamed images (data.image.storage) use their files' sha256."""
    return content_digests(samples.inputs, samples.hashes) or defaults.sample_digests(samples)


def read_limits(cfg: ExperimentConfig) -> dict[str, int]:
    """Images whose header declares more pixels are refused before they are decoded."""
    return {"max_pixels": cfg.data.image.max_pixels}


def scan_settings(cfg: ExperimentConfig) -> tuple[ScanConfig, str]:
    """How scans with masks (source msd) are read, and where that sits in the config."""
    return cfg.data.image.scan, "data.image.scan"


__all__ = ["attribution_methods", "describe_sizes", "fingerprints", "input_statistics", "name", "config", "sources", "split_methods", "input_help", "spatial_dims", "scan_settings", "read_limits", "pair_sources", "read_pairs", "read_pair", "read_scan", "scan_reference", "write_mask", "mask_suffix", "collect_scans", "scan_stem", "check_config", "load", "split", "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "read_objects", "scan_from_array", "add_commands", "datasets", "export_dataset", "export_plan", "read_raw", "raw_rows", "explain_inputs", "data_card", "subgroup_table"]
