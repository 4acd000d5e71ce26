"""Batched volume augmentation: deterministic, masks move with their images, off = untouched."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from biomx.data.spatial_augment import augment_batch, is_active
from biomx.modalities.common.scan_config import SpatialAugmentConfig
from data_paths import MEDMNIST

SPATIAL = dict(flip=0.5, rotate90=0.5, rotate=25.0, scale=(0.85, 1.15))
EVERYTHING = SpatialAugmentConfig(**SPATIAL, brightness=0.2, contrast=0.2, gamma=0.3, noise=0.1)


@pytest.fixture(scope="module")
def shapes() -> torch.Tensor:
    """12 real adrenal gland shape volumes (AdrenalMNIST3D, 28^3) as int64 masks: 0 outside,
    the gland 2 in the first half of D and 1 in the second (three classes, not symmetric)."""
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as arrays:
        masks = torch.from_numpy(arrays["train_images"][:12] // 255).long()
    masks[:, :14] *= 2
    return masks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_disabled_returns_the_inputs_untouched(shapes):
    x = shapes[:, None].float()
    cfg = SpatialAugmentConfig()
    assert not is_active(cfg)
    out, labels = augment_batch(x, shapes, cfg, _gen(0))
    assert out is x and labels is shapes
    image2d = x[:, :, 10]
    assert augment_batch(image2d, None, cfg, _gen(0))[0] is image2d


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_dtypes_and_inputs_preserved(shapes, dims):
    masks = shapes if dims == 3 else shapes[:, 10]
    x = torch.cat([masks[:, None].float(), torch.rand(masks.shape)[:, None]], dim=1)  # 2 channels
    before_x, before_masks = x.clone(), masks.clone()
    out, labels = augment_batch(x, masks, EVERYTHING, _gen(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert labels.shape == masks.shape and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(x, before_x) and torch.equal(masks, before_masks)  # nothing in place
    assert not torch.equal(out, x)


def test_same_generator_same_batch_other_seed_other_batch(shapes):
    x = shapes[:, None].float()
    a = augment_batch(x, shapes, EVERYTHING, _gen(7))
    b = augment_batch(x, shapes, EVERYTHING, _gen(7))
    c = augment_batch(x, shapes, EVERYTHING, _gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_flips_and_quarter_turns_move_mask_and_image_exactly(shapes):
    x = shapes[:, None].float()
    cfg = SpatialAugmentConfig(flip=0.5, rotate90=0.5)
    out, labels = augment_batch(x, shapes, cfg, _gen(3))
    assert torch.equal(out[:, 0], labels.float())
    changed = [not torch.equal(labels[i], shapes[i]) for i in range(len(shapes))]
    assert sum(changed) >= 6  # most samples were flipped or turned...
    assert (labels.flatten(1).sum(1) == shapes.flatten(1).sum(1)).all()  # ...and only moved


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return 2 * (a * b).sum(1) / (a.sum(1) + b.sum(1))


def test_affine_moves_mask_with_image(shapes):
    masks = (shapes > 0).long()
    x = masks[:, None].float()
    cfg = SpatialAugmentConfig(**SPATIAL)
    out, labels = augment_batch(x, masks, cfg, _gen(4))
    assert not torch.equal(labels, masks)
    # bilinear (image) and nearest (mask) differ only on the thin shapes' boundaries
    assert (_dice(out[:, 0] > 0.5, labels) > 0.85).all()
    # The check can fail: a mask moved with other random draws does not match.
    _, other = augment_batch(x, masks, cfg, _gen(5))
    assert _dice(out[:, 0] > 0.5, other).mean() < 0.5


def test_affine_path_matches_exact_flips_and_turns(shapes):
    """With zoom 1 and no rotation the resampling path reproduces the exact index path."""
    x = shapes[:, None].float()
    exact, exact_labels = augment_batch(x, shapes, SpatialAugmentConfig(flip=0.5, rotate90=0.5), _gen(9))
    resampled, labels = augment_batch(x, shapes, SpatialAugmentConfig(flip=0.5, rotate90=0.5, scale=(1.0, 1.0)),
                                      _gen(9))  # fmt: skip
    assert torch.allclose(resampled, exact, atol=1e-5)
    assert torch.equal(labels, exact_labels)


def test_quarter_turns_only_when_the_first_two_axes_are_equal(shapes):
    masks = shapes[:, :20]  # (N, 20, 28, 28): D != H, no quarter turn possible
    x = masks[:, None].float()
    out, labels = augment_batch(x, masks, SpatialAugmentConfig(rotate90=0.99), _gen(0))
    assert torch.equal(out, x) and torch.equal(labels, masks)
    square = shapes[:, None].float()
    turned, _ = augment_batch(square, None, SpatialAugmentConfig(rotate90=0.99), _gen(0))
    assert all(not torch.equal(turned[i], square[i]) for i in range(len(square)))


def test_intensity_changes_images_never_masks(shapes):
    x = shapes[:, None].float() / 2 + 0.1
    cfg = SpatialAugmentConfig(brightness=0.3, contrast=0.3, gamma=0.5, noise=0.05)
    out, labels = augment_batch(x, shapes, cfg, _gen(2))
    assert torch.equal(labels, shapes)
    assert not torch.allclose(out, x)
    # gamma alone keeps each sample's range: min and max map to themselves
    gamma, _ = augment_batch(x, None, SpatialAugmentConfig(gamma=0.5), _gen(2))
    assert torch.allclose(gamma.amin(dim=(1, 2, 3, 4)), x.amin(dim=(1, 2, 3, 4)), atol=1e-5)
    assert torch.allclose(gamma.amax(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4)), atol=1e-5)
    # brightness alone shifts each sample by at most 0.3 of its own std
    bright, _ = augment_batch(x, None, SpatialAugmentConfig(brightness=0.3), _gen(2))
    shift = (bright - x).flatten(1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    assert (shift[:, 0].abs() <= 0.3 * x.flatten(1).std(1) + 1e-6).all()


def test_whole_batch_is_fast():
    x = torch.rand(16, 1, 48, 48, 48)
    masks = (x[:, 0] > 0.5).long()
    augment_batch(x[:2], masks[:2], EVERYTHING, _gen(0))  # warm-up
    start = time.perf_counter()
    augment_batch(x, masks, EVERYTHING, _gen(0))
    assert time.perf_counter() - start < 5.0  # ~0.2 s on one core; a per-voxel loop takes minutes
