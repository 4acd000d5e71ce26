"""Shared fixtures: small samples of real data (PneumoniaMNIST chest X-rays)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from biomx.datasets import get_dataset
from biomx.modalities.image.starter_data import export_images

# Caches written by tests (decoded images, featurised molecules, preprocessed cases) go to a
# throwaway folder, never the user's ~/.cache/biomx; subprocesses inherit it.
os.environ["BIOMX_CACHE"] = tempfile.mkdtemp(prefix="biomx-test-cache-")


@pytest.fixture(scope="session")
def xrays() -> tuple[torch.Tensor, torch.Tensor]:
    """600 real chest X-rays (uint8, (N, 1, 28, 28)) and binary labels (float)."""
    with np.load(get_dataset("pneumoniamnist").path) as arrays:
        images = torch.from_numpy(arrays["train_images"][:600]).unsqueeze(1)
        labels = torch.from_numpy(arrays["train_labels"][:600, 0]).float()
    return images, labels


@pytest.fixture(scope="session")
def png_folder(tmp_path_factory) -> Path:
    """160 real X-rays as PNG files, folder per class, with manifest.csv."""
    root = tmp_path_factory.mktemp("png")
    export_images("pneumoniamnist", root, "png", limit=160)
    return root


@pytest.fixture
def xray_pngs(tmp_path, png_folder, monkeypatch) -> Path:
    """A private copy of `png_folder` (without its manifest: labels from the folder names) and a
    private cache, for tests that write next to the images or damage one."""
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    shutil.copytree(png_folder, tmp_path / "xrays")
    (tmp_path / "xrays" / "manifest.csv").unlink()
    return tmp_path / "xrays"


@pytest.fixture(scope="session")
def dicom_folder(tmp_path_factory) -> Path:
    """120 real X-rays as DICOM files, folder per class, with manifest.csv."""
    root = tmp_path_factory.mktemp("dcm")
    export_images("pneumoniamnist", root, "dcm", limit=120)
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny models (`pytestmark = usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
