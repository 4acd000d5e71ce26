"""Decoded image files are kept in the on-disk cache: a second load of the same files and settings
reads the entry instead of decoding; an edited file or another setting is a new entry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biomx.data.cache import ArrayCache
from biomx.modalities.image import pipeline as image_pipeline
from biomx.modalities.image.config import ImageData, ImageSettings
from biomx.modalities.image.decode import decode_images
from biomx.modalities.image.starter_data import export_images


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*/*") if p.is_dir() and not p.name.startswith("."))


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "xrays"
    export_images("pneumoniamnist", root, "png", limit=24)
    (root / "manifest.csv").unlink()
    return root


def _load(root: Path, on_error: str = "raise", **image):
    """Load a folder source; `image` are data.image settings (channels, cache, ...)."""
    settings = ImageSettings(size=(20, 20), **image)
    return image_pipeline.load(ImageData(source="folder", path=str(root), on_error=on_error, image=settings))


def test_second_load_is_a_cache_hit(folder, tmp_path):
    cache = tmp_path / "cache"
    first = _load(folder)
    (entry,) = _entries(cache)
    second = _load(folder)
    assert _entries(cache) == [entry]
    torch.testing.assert_close(first.inputs, second.inputs, rtol=0, atol=0)
    assert second.inputs.dtype == torch.float16 and second.inputs.is_contiguous()
    assert first.ids == second.ids and first.labels == second.labels and first.hashes == second.hashes

    # The hit really is served from the entry: replace its images and load again.
    store = ArrayCache(cache)
    arrays = {name: np.array(a) for name, a in store.get(entry.name).items()}
    meta = store.get_meta(entry.name)
    arrays["images"][:] = 0.5
    shutil.rmtree(entry)
    store.put(entry.name, arrays, meta)
    assert bool((_load(folder).inputs == 0.5).all())


def test_changed_file_or_setting_is_a_new_entry(folder, tmp_path):
    cache = tmp_path / "cache"
    first = _load(folder)
    edited = sorted(folder.glob("*/*.png"))[5]
    pixels = np.asarray(Image.open(edited))
    Image.fromarray(255 - pixels).save(edited)  # same name, new content
    second = _load(folder)
    assert len(_entries(cache)) == 2
    row = second.ids.index(str(edited))
    fresh, _, _ = decode_images([edited], size=(20, 20), channels=1)
    torch.testing.assert_close(second.inputs[row], fresh[0], rtol=0, atol=0)
    assert not torch.equal(first.inputs[row], second.inputs[row])
    others = [i for i in range(len(second.ids)) if i != row]
    assert torch.equal(first.inputs[others], second.inputs[others])
    _load(folder, channels=3)
    assert len(_entries(cache)) == 3


def test_skipped_files_are_remembered(folder, tmp_path):
    broken = folder / "normal" / "zz_broken.png"
    broken.write_bytes(Image.open(next(folder.glob("normal/*.png"))).tobytes()[:100])  # no PNG header
    first = _load(folder, on_error="skip")
    second = _load(folder, on_error="skip")
    assert len(_entries(tmp_path / "cache")) == 1
    assert first.skipped == second.skipped and len(second.skipped) == 1 and second.skipped[0][0] == str(broken)
    assert len(second.ids) == 24 and str(broken) not in second.ids


def test_cache_off_writes_nothing(folder, tmp_path):
    _load(folder, cache=False)
    assert _entries(tmp_path / "cache") == []
