"""The volume modality: 3D scans (an .npz of volumes to classify; NIfTI, DICOM series, NRRD and
MetaImage files; MSD folders of scans and masks for segmentation). Explained with 3D Grad-CAM."""

from __future__ import annotations

from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.modalities.common.defaults import add_commands, check_config, sample_digests, split
from biomx.modalities.common.scan_config import ScanConfig
from biomx.modalities.volume import pipeline
from biomx.modalities.volume.arrays import read_objects, scan_from_array
from biomx.modalities.volume.attribution import attribution_methods
from biomx.modalities.volume.audit import describe_sizes, fingerprints
from biomx.modalities.volume.config import VolumeData
from biomx.modalities.volume.drift import input_statistics
from biomx.modalities.volume.export import export_plan, raw_rows, read_raw
from biomx.modalities.volume.pipeline import build_datasets, explain, inference_model, read_inputs
from biomx.modalities.volume.scans import (
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
from biomx.modalities.volume.starter_data import DATASETS as datasets
from biomx.modalities.volume.starter_data import export_dataset

name = "volume"
config = VolumeData
sources = config.sources
split_methods = config.split_methods
spatial_dims = 3  # segmentation labels its voxels
input_help = "volumes (NIfTI, NRRD, MHA, DICOM series folders, .npz)"


def load(cfg: ExperimentConfig) -> Samples:
    return pipeline.load(cfg.data, getattr(cfg.task, "classes", None))


def read_limits(cfg: ExperimentConfig) -> dict[str, int]:
    """Scans whose header declares more voxels are refused before they are read."""
    return {"max_voxels": cfg.data.volume.max_voxels}


def scan_settings(cfg: ExperimentConfig) -> tuple[ScanConfig, str]:
    """How scans with masks (source msd) are read, and where that sits in the config."""
    return cfg.data.volume, "data.volume"


__all__ = ["attribution_methods", "describe_sizes", "fingerprints", "input_statistics", "name", "config", "sources", "split_methods", "input_help", "spatial_dims", "scan_settings", "read_limits", "pair_sources", "read_pairs", "read_pair", "read_scan", "scan_reference", "write_mask", "mask_suffix", "collect_scans", "scan_stem", "check_config", "load", "split", "sample_digests", "build_datasets", "inference_model", "explain", "read_inputs", "read_objects", "scan_from_array", "export_plan", "read_raw", "raw_rows", "add_commands", "datasets", "export_dataset"]
