"""The image modality: 2D images (PNG, JPEG, TIFF, DICOM, NIfTI slices; folders, CSV manifests,
.npz arrays, embedded datasets) for classification and regression, and, read from MSD folders,
for segmentation. Explained with Grad-CAM."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.data.splits import row_digests
from biomx.errors import ConfigError
from biomx.modalities.common.scan_config import ScanConfig
from biomx.modalities.image import pipeline
from biomx.modalities.image.config import ImageData
from biomx.modalities.image.pipeline import build_datasets, explain, inference_model, read_inputs
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

name = "image"
config = ImageData
sources = config.sources
split_methods = config.split_methods
spatial_dims = 2  # segmentation labels its pixels
input_help = "image files or folders (PNG, JPEG, TIFF, DICOM, NIfTI)"


def load(cfg: ExperimentConfig) -> Samples:
    return pipeline.load(cfg.data, getattr(cfg.task, "classes", None))


def scan_settings(cfg: ExperimentConfig) -> tuple[ScanConfig, str]:
    """How scans with masks (source msd) are read, and where that sits in the config."""
    return cfg.data.image.scan, "data.image.scan"


def check_config(cfg: ExperimentConfig) -> None:
    """Nothing beyond the config schema (sources and split methods are checked there)."""


def split(cfg: ExperimentConfig, samples: Samples, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    raise ConfigError(f"data.split.method: {cfg.data.split.method!r} is not a method of the {name} modality")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """No commands of its own."""


def sample_digests(samples: Samples) -> list[str] | None:
    """A content hash per loaded image (its decoded row), for the duplicates-across-splits check."""
    inputs = samples.inputs
    return row_digests(inputs) if isinstance(inputs, torch.Tensor) and len(inputs) == len(samples.ids) else None


__all__ = ["name", "config", "sources", "split_methods", "input_help", "spatial_dims", "scan_settings", "pair_sources", "read_pairs", "read_pair", "read_scan", "scan_reference", "write_mask", "mask_suffix", "collect_scans", "scan_stem", "check_config", "load", "split", "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "add_commands", "datasets", "export_dataset"]
