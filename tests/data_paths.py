"""Where the tests find their real data: samples carried in tests/data (see its ATTRIBUTION.md)
and the datasets embedded in the package. Nothing here reads outside the repository."""

from __future__ import annotations

from pathlib import Path

from biomx.datasets import get_dataset
from biomx.modalities.image.starter_data import NUCLEI_IMAGE, NUCLEI_MASK

TEST_DATA = Path(__file__).resolve().parent / "data"
MEDMNIST = TEST_DATA / "medmnist"  # subsets of MedMNIST v2 npz files, official key layout
DNA = TEST_DATA / "dna_tf_binding"  # sample.fa (Oct4) and sample2.fa (Mafk), complete

# Embedded in the package already: used from there, not duplicated in tests/data.
PNEUMONIAMNIST = get_dataset("pneumoniamnist").path  # the full official train and val splits
NUCLEI_2D_IMAGE, NUCLEI_2D_MASK = NUCLEI_IMAGE, NUCLEI_MASK  # 512x512 uint16, pixels as published

__all__ = ["DNA", "MEDMNIST", "NUCLEI_2D_IMAGE", "NUCLEI_2D_MASK", "PNEUMONIAMNIST", "TEST_DATA"]
