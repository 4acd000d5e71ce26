"""Whole-image inference by overlapping windows, with memory bounded on device and host.

A segmentation network is trained on patches, but a CT can be 512 x 512 x 600 voxels: too big
for one forward pass, and its K-class probability map (K x 4 bytes per voxel) too big for
the GPU. `sliding_window_predict` cuts windows on the CPU, sends `batch_size` at a time to the
device, and brings each batch's outputs straight back, where they are blended into a float32
numpy array. So device memory is one batch of windows whatever the image size, and the host
buffer becomes a memory-mapped temporary file when it would exceed `memmap_above_bytes`.

Usage:

    probs = sliding_window_predict(model, image, (96, 96, 96), out_channels=3, device="cuda",
                                   autocast=lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    labels = probs.argmax(0)

Window positions and the Gaussian weighting are MONAI's (`dense_patch_slices`,
`compute_importance_map` with sigma_scale 0.125), so with `postprocess=None` the result equals
`monai.inferers.sliding_window_inference(..., mode="gaussian")`; the difference is where the
stitching happens (MONAI keeps the full output on one device) and that the weight map is
accumulated once per voxel rather than per channel.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from torch import Tensor

from biomx.errors import ConfigError


def _softmax(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=1)


def window_starts(
    image_size: Sequence[int], patch_size: Sequence[int], overlap: float
) -> list[tuple[int, ...]]:
    """Start of each window in an image of `image_size` (>= patch_size on every axis).

    The same positions as MONAI's `sliding_window_inference`: a stride of
    `int(patch * (1 - overlap))` (at least 1; the patch itself where it fills the axis), the
    last window flush with the far edge.
    """
    interval = [
        p if p == s else max(int(p * (1 - overlap)), 1) for s, p in zip(image_size, patch_size, strict=True)
    ]
    return [tuple(sl.start for sl in window) for window in dense_patch_slices(image_size, patch_size, interval)]


def _check(
    image_shape: tuple[int, ...], patch_size: Sequence[int], overlap: float, batch_size: int, weighting: str
) -> tuple[int, ...]:
    """The patch size as a tuple of ints, after checking every argument a config can get wrong."""
    if len(image_shape) not in (3, 4):
        raise ValueError(
            f"sliding_window_predict: expected a (C, *S) image with 2 or 3 spatial axes; got shape {image_shape}"
        )
    patch = tuple(patch_size)
    if len(patch) != len(image_shape) - 1:
        raise ConfigError(
            f"patch_size: {list(patch)} has {len(patch)} values but the image (shape {image_shape}) "
            f"has {len(image_shape) - 1} spatial axes"
        )
    if any(isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 1 for p in patch):
        raise ConfigError(f"patch_size: expected positive integers; got {list(patch)}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap: expected a number in [0, 1); got {overlap!r}")
    if batch_size < 1:
        raise ConfigError(f"sw_batch_size: expected an integer >= 1; got {batch_size!r}")
    if weighting not in ("gaussian", "constant"):
        raise ConfigError(f"weighting: expected 'gaussian' or 'constant'; got {weighting!r}")
    return tuple(int(p) for p in patch)


def _buffer(shape: tuple[int, ...], on_disk: bool, directory: str | Path | None) -> np.ndarray:
    """A zeroed float32 array, in RAM or memory-mapped to an anonymous temporary file.

    `tempfile.TemporaryFile` has no name on Linux (O_TMPFILE, or unlinked at once), and the
    mapping keeps its own handle, so closing the file here is safe: the disk space lives exactly
    as long as the array (and any view of it), and nothing is left behind after a crash.
    """
    if not on_disk:
        return np.zeros(shape, dtype=np.float32)
    with tempfile.TemporaryFile(prefix="biomx-sw-", dir=directory) as handle:
        return np.memmap(handle, dtype=np.float32, mode="w+", shape=shape)  # a new file reads as zeros



def sliding_window_predict(
    net: Callable[[Tensor], Tensor],
    image: np.ndarray | Tensor,
    patch_size: Sequence[int],
    *,
    out_channels: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    autocast: Callable[[], AbstractContextManager] | None = None,
    weighting: str = "gaussian",
    postprocess: Callable[[Tensor], Tensor] | None = _softmax,
    memmap_dir: str | Path | None = None,
    memmap_above_bytes: int = 1 << 30,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Predict a whole image by blending overlapping windows; memory stays bounded.

    Args:
        net: maps a (n, C, *patch_size) float32 batch on `device` to (n, out_channels, *patch_size)
            (call `model.eval()` first; this runs under `torch.inference_mode`).
        image: (C, *S) float on the CPU, 2 or 3 spatial axes; a read-only memmap is fine (only
            the windows are read). An axis shorter than the patch is padded with the image's
            minimum, centred as MONAI does, and the output cropped back.
        patch_size: window size, one value per spatial axis.
        out_channels: channels of the network's output.
        overlap: fraction of a window shared with its neighbour along each axis, in [0, 1).
        batch_size: windows per forward pass (the device memory knob).
        device: where the network runs.
        autocast: a factory of the mixed-precision context for the forward pass, e.g.
            `lambda: torch.autocast("cuda", dtype=torch.bfloat16)`; outputs are cast to float32
            before `postprocess`.
        weighting: "gaussian" (centre voxels count more, MONAI's sigma 0.125 x patch) or
            "constant" (plain average).
        postprocess: applied to each window's float32 output before blending; default softmax
            over channels (blend probabilities, not logits); None blends raw outputs.
        memmap_dir: folder for the temporary file of a large result (default: the system's).
        memmap_above_bytes: a result bigger than this is an `np.memmap` on an anonymous
            temporary file (freed with the array, nothing to clean up) instead of RAM.
        progress: called after each batch with (windows done, windows total).

    Returns:
        (out_channels, *S) float32: the weighted mean of the windows' outputs at each voxel.

    Raises:
        ConfigError: a patch size of the wrong length or non-positive, a bad overlap, batch size
            or weighting.
    """
    image = _as_numpy(image)
    shape = tuple(image.shape)
    patch = _check(shape, patch_size, overlap, batch_size, weighting)
    size, padded, before = _padding(shape[1:], patch)
    fill = float(image.min()) if padded != size else 0.0
    device = torch.device(device)
    autocast = autocast or contextlib.nullcontext

    weight = compute_importance_map(patch, mode=weighting, sigma_scale=0.125, device=device, dtype=torch.float32)
    starts = window_starts(padded, patch, overlap)
    regions = [_regions(start, before, patch, size) for start in starts]
    out, norm = _accumulators(out_channels, size, regions, weight.cpu().numpy(), memmap_above_bytes, memmap_dir)

    done = 0
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            places = regions[first : first + batch_size]
            windows = np.full((len(places), shape[0], *patch), fill, dtype=np.float32)
            for window, (src, dst) in zip(windows, places, strict=True):
                window[(slice(None), *dst)] = image[(slice(None), *src)]
            result = _forward(net, windows, device, autocast, out_channels, postprocess) * weight
            for blended, (src, dst) in zip(result.cpu().numpy(), places, strict=True):
                out[(slice(None), *src)] += blended[(slice(None), *dst)]
            done += len(places)
            if progress is not None:
                progress(done, len(starts))

    out /= norm  # every voxel is covered by at least one window with weight > 0
    del norm
    return out


def _accumulators(out_channels: int, size: tuple[int, ...], regions: list, weight: np.ndarray, above_bytes: int,
                  memmap_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Zeroed (out_channels, *size) sums and the (*size) sum of window weights (on disk when big)."""
    on_disk = out_channels * math.prod(size) * 4 > above_bytes
    out, norm = _buffer((out_channels, *size), on_disk, memmap_dir), _buffer(size, on_disk, memmap_dir)
    for src, dst in regions:  # the weight map once per voxel, not per channel
        norm[src] += weight[dst]
    return out, norm


def _as_numpy(image: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
    return image


def _padding(size: tuple[int, ...], patch: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(size, padded size, padding before): an axis shorter than the patch is padded, centred as
    MONAI does (half before, the rest after)."""
    padded = tuple(max(s, p) for s, p in zip(size, patch, strict=True))
    return size, padded, tuple((q - s) // 2 for s, q in zip(size, padded, strict=True))


def _regions(start: tuple[int, ...], before: tuple[int, ...], patch: tuple[int, ...], size: tuple[int, ...]
             ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:  # fmt: skip
    """(slice of the image, slice of the window) where the window at `start` (in padded
    coordinates) overlaps the real image."""
    lo = [max(s - b, 0) for s, b in zip(start, before, strict=True)]
    hi = [min(s - b + p, n) for s, b, p, n in zip(start, before, patch, size, strict=True)]
    src = tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))
    dst = tuple(slice(a - s + b, z - s + b) for a, z, s, b in zip(lo, hi, start, before, strict=True))
    return src, dst


def _forward(net: Callable[[Tensor], Tensor], windows: np.ndarray, device: torch.device,
             autocast: Callable[[], AbstractContextManager], out_channels: int,
             postprocess: Callable[[Tensor], Tensor] | None) -> Tensor:  # fmt: skip
    """The network's float32 (post-processed) output for a batch of windows, shape-checked."""
    with autocast():
        result = net(torch.from_numpy(windows).to(device))
    expected = (len(windows), out_channels, *windows.shape[2:])
    if tuple(result.shape) != expected:
        raise ValueError(f"sliding_window_predict: the network returned shape {tuple(result.shape)} for windows "
                         f"of {tuple(windows.shape)}; expected {expected}")  # fmt: skip
    result = result.float()
    return postprocess(result) if postprocess is not None else result
