"""Random augmentation of a whole batch of volumes (or 2D images) and their masks at once.

`augment_batch` draws one set of parameters per sample from the caller's generator (so a batch
is the same with any number of DataLoader workers and after a resume), then transforms the whole
(N, C, *S) batch with a handful of tensor operations: no Python loop over samples or voxels.

Spatial transforms move a label mask exactly as they move its image. Flips and quarter turns
alone are index operations (exact, no resampling). With a rotation or a zoom, flips, quarter
turns, rotations and zoom are folded into ONE affine per sample and resampled once with
`grid_sample` (bilinear for images, nearest neighbour for masks, "border" padding for both, so
an image and its mask are extended the same way and no artificial constant planes appear).
Intensity transforms touch images only, with strengths in units of each sample's own standard
deviation, so they mean the same on z-scored CT patches and on [0, 1] MedMNIST volumes.

`spatial_draws`, `resample`, `flip_and_turn` and `intensity` are public for tasks that move
their own annotations with the images (detection's boxes draw and transform exactly as here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_SPATIAL = ("flip", "rotate90", "rotate", "scale")
INTENSITY = ("brightness", "contrast", "gamma", "noise")


def is_active(cfg: Any) -> bool:
    """True when any transform of `cfg` (a `SpatialAugmentConfig`) is switched on."""
    return any(getattr(cfg, name) for name in _SPATIAL + INTENSITY)


def augment_batch(x: Tensor, labels: Tensor | None, cfg: Any,
                  generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """Augment a batch of images, and their label masks identically.

    Args:
        x: images (N, C, D, H, W) or (N, C, H, W); float (other dtypes are computed in float32).
        labels: integer masks (N, D, H, W) / (N, H, W), or None.
        cfg: an object with the attributes of `biomx.config.SpatialAugmentConfig`:
            flip (probability per spatial axis), rotate90 (probability of 1-3 quarter turns in
            the first two spatial axes; only when those two sizes are equal), rotate (max degrees
            about each axis; one in-plane angle in 2D), scale ((min, max) zoom, > 1 zooms in),
            brightness (shift by U(-b, b) sample stds), contrast (scale about the sample mean by
            U(1-c, 1+c)), gamma (exponent exp(U(-g, g)) on the sample's min-max rescaled
            intensities, mapped back to its range), noise (Gaussian, std = noise x sample std).
        generator: the only source of randomness (e.g. `batch_generator(seed, epoch, indices)`).

    Returns:
        (images, masks): new tensors of the same shapes (masks int64); the inputs themselves,
        untouched, when every transform is off. The inputs are never modified in place.

    Raises:
        ValueError: x is not 4D/5D, or labels do not match its batch and spatial shape.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"expected images (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    if labels is not None and (labels.shape[0] != x.shape[0] or labels.shape[1:] != x.shape[2:]):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match images {tuple(x.shape)}")
    if not is_active(cfg):
        return x, labels
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    uniform, flips, turns, matrix = spatial_draws(cfg, x.shape[0], tuple(x.shape[2:]), generator)
    if matrix is not None:
        x, labels = resample(x, labels, matrix)
    else:
        x, labels = flip_and_turn(x, labels, flips, turns)
    if any(getattr(cfg, name) for name in INTENSITY):
        x = intensity(x, cfg, uniform, generator)
    return x, labels


Uniform = Callable[..., Tensor]


def spatial_draws(cfg: Any, n: int, spatial: tuple[int, ...], generator: torch.Generator
                  ) -> tuple[Uniform, Tensor | None, Tensor | None, Tensor | None]:  # fmt: skip
    """The spatial parameters of a batch of `n` samples shaped `spatial`, drawn in one fixed order:
    (uniform(lo, hi, *shape), the sampler the intensity draws continue with; flips (n, D) or None;
    quarter turns (n,) or None; the per-sample sampling matrix when a rotation or zoom is on, else
    None (flips and turns are then applied exactly by `flip_and_turn`). One function for every
    caller, so images and whatever moves with them (masks, detection's boxes) see the same draws."""
    dims = len(spatial)

    def uniform(lo: float, hi: float, *shape: int) -> Tensor:  # draws on the generator's device
        return torch.rand(n, *shape, generator=generator, dtype=torch.float64) * (hi - lo) + lo

    flips = uniform(0, 1, dims) < cfg.flip if cfg.flip > 0 else None
    turns = None
    if cfg.rotate90 > 0 and spatial[0] == spatial[1]:
        chosen = uniform(0, 1) < cfg.rotate90
        k = torch.randint(1, 4, (n,), generator=generator)
        turns = torch.where(chosen, k, 0)
    matrix = None
    if cfg.rotate > 0 or cfg.scale is not None:
        angles = uniform(-cfg.rotate, cfg.rotate, 3 if dims == 3 else 1).deg2rad() if cfg.rotate > 0 else None
        zoom = uniform(*cfg.scale) if cfg.scale is not None else None
        matrix = sampling_matrix(n, dims, flips, turns, angles, zoom)
    return uniform, flips, turns, matrix


# ---- spatial -------------------------------------------------------------------------------


def flip_and_turn(x: Tensor, labels: Tensor | None, flips: Tensor | None,
                   turns: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Exact flips and quarter turns by indexing: only the chosen samples are touched."""
    if flips is None and turns is None:
        return x, labels
    x = x.clone()
    labels = labels.clone() if labels is not None else None
    if flips is not None:
        for axis in range(flips.shape[1]):
            chosen = flips[:, axis].to(x.device)
            if chosen.any():
                x[chosen] = x[chosen].flip(2 + axis)
                if labels is not None:
                    labels[chosen] = labels[chosen].flip(1 + axis)
    if turns is not None:
        for k in (1, 2, 3):
            chosen = (turns == k).to(x.device)
            if chosen.any():
                x[chosen] = x[chosen].rot90(k, dims=(2, 3))
                if labels is not None:
                    labels[chosen] = labels[chosen].rot90(k, dims=(1, 2))
    return x, labels


def sampling_matrix(n: int, dims: int, flips: Tensor | None, turns: Tensor | None,
                     angles: Tensor | None, zoom: Tensor | None) -> Tensor:
    """Per sample, the matrix taking an output voxel position to the input position it reads.

    Positions are in voxels from the centre, in torch's axis order (D, H, W) or (H, W). A
    transform that maps the image by T reads the input at T^-1 p; composing transforms
    multiplies their sampling matrices in the order they are applied.
    """
    m = torch.eye(dims, dtype=torch.float64).repeat(n, 1, 1)
    if flips is not None:
        m = m * torch.where(flips, -1.0, 1.0).to(torch.float64)[:, None, :]
    if turns is not None:  # torch.rot90 by k in (axis 0, axis 1): reads the input at (v, -u)
        quarter = torch.eye(dims, dtype=torch.float64)
        quarter[:2, :2] = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        powers = torch.stack([torch.linalg.matrix_power(quarter, k) for k in range(4)])
        m = m @ powers[turns]
    if angles is not None:
        # One rotation about each axis: the plane of the two other axes (2D: the only plane).
        planes = [(1, 2), (0, 2), (0, 1)] if dims == 3 else [(0, 1)]
        for plane, angle in zip(planes, angles.unbind(1), strict=True):
            r = torch.eye(dims, dtype=torch.float64).repeat(n, 1, 1)
            a, b = plane
            r[:, a, a], r[:, a, b] = angle.cos(), -angle.sin()
            r[:, b, a], r[:, b, b] = angle.sin(), angle.cos()
            m = m @ r
    if zoom is not None:  # zooming in by s reads the input at p / s
        m = m / zoom[:, None, None]
    return m


def resample(x: Tensor, labels: Tensor | None, matrix: Tensor) -> tuple[Tensor, Tensor | None]:
    """Apply per-sample sampling matrices (voxel units) with one grid_sample per tensor."""
    spatial = x.shape[2:]
    # affine_grid works in [-1, 1] per axis (align_corners=False: voxel centres at (2i+1)/n - 1)
    # and orders axes (x=W, y=H, z=D): scale voxel units to that box, then reverse the axes.
    half = torch.tensor([s / 2 for s in spatial], dtype=torch.float64)
    normalised = matrix * half[None, None, :] / half[None, :, None]  # diag(1/h) M diag(h)
    theta = normalised.flip(1, 2)
    theta = torch.cat([theta, torch.zeros(*theta.shape[:2], 1, dtype=torch.float64)], dim=2)
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if labels is not None:
        moved = F.grid_sample(labels[:, None].to(x.dtype), grid, mode="nearest", padding_mode="border",
                              align_corners=False)  # fmt: skip
        labels = moved[:, 0].round().to(torch.int64)
    return out, labels


# ---- intensity -----------------------------------------------------------------------------


def intensity(x: Tensor, cfg: Any, uniform: Any, generator: torch.Generator) -> Tensor:
    """Contrast, brightness, gamma and noise, each with per-sample strength, per channel stats."""
    n = x.shape[0]
    spatial = tuple(range(2, x.ndim))
    shape = (n,) + (1,) * (x.ndim - 1)

    def draw(lo: float, hi: float) -> Tensor:
        return uniform(lo, hi).to(device=x.device, dtype=x.dtype).view(shape)

    std = x.std(dim=spatial, keepdim=True) if cfg.brightness > 0 or cfg.noise > 0 else None
    if cfg.contrast > 0:
        mean = x.mean(dim=spatial, keepdim=True)
        x = (x - mean) * draw(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.brightness > 0:
        x = x + draw(-cfg.brightness, cfg.brightness) * std
    if cfg.gamma > 0:
        lo, hi = x.amin(dim=spatial, keepdim=True), x.amax(dim=spatial, keepdim=True)
        span = (hi - lo).clamp_min(1e-6)  # a constant channel stays constant
        exponent = draw(-cfg.gamma, cfg.gamma).exp()
        x = ((x - lo) / span).clamp(0, 1).pow(exponent) * span + lo
    if cfg.noise > 0:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        x = x + noise * (cfg.noise * std)
    return x
