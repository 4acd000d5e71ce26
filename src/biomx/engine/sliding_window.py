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
from collections.abc import Callable, Iterator, Sequence
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


def _batches(starts: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for i in range(0, len(starts), size):
        yield starts[i : i + size]


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
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype in (torch.bfloat16, torch.float16) else image).numpy()
    shape = tuple(image.shape)
    patch = _check(shape, patch_size, overlap, batch_size, weighting)
    size = shape[1:]
    padded = tuple(max(s, p) for s, p in zip(size, patch, strict=True))
    before = tuple((q - s) // 2 for s, q in zip(size, padded, strict=True))  # as MONAI: half, rest after
    fill = float(image.min()) if padded != size else 0.0
    device = torch.device(device)
    autocast = autocast or contextlib.nullcontext

    weight = compute_importance_map(patch, mode=weighting, sigma_scale=0.125, device=device, dtype=torch.float32)
    weight_cpu = weight.cpu().numpy()
    starts = window_starts(padded, patch, overlap)
    out_bytes = out_channels * math.prod(size) * 4
    on_disk = out_bytes > memmap_above_bytes
    out = _buffer((out_channels, *size), on_disk, memmap_dir)
    norm = _buffer(size, on_disk, memmap_dir)

    def regions(start: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(slice of the image, slice of the window) where the window overlaps the real image."""
        lo = [max(s - b, 0) for s, b in zip(start, before, strict=True)]
        hi = [min(s - b + p, n) for s, b, p, n in zip(start, before, patch, size, strict=True)]
        src = tuple(slice(a, z) for a, z in zip(lo, hi, strict=True))
        dst = tuple(slice(a - s + b, z - s + b) for a, z, s, b in zip(lo, hi, start, before, strict=True))
        return src, dst

    for start in starts:  # the weight map once per voxel, not per channel
        src, dst = regions(start)
        norm[src] += weight_cpu[dst]

    done = 0
    with torch.inference_mode():
        for batch in _batches(starts, batch_size):
            windows = np.full((len(batch), shape[0], *patch), fill, dtype=np.float32)
            places = [regions(start) for start in batch]
            for window, (src, dst) in zip(windows, places, strict=True):
                window[(slice(None), *dst)] = image[(slice(None), *src)]
            with autocast():
                result = net(torch.from_numpy(windows).to(device))
            if tuple(result.shape) != (len(batch), out_channels, *patch):
                raise ValueError(
                    f"sliding_window_predict: the network returned shape {tuple(result.shape)} for windows "
                    f"of {(len(batch), shape[0], *patch)}; expected {(len(batch), out_channels, *patch)}"
                )
            result = result.float()
            if postprocess is not None:
                result = postprocess(result)
            result = (result * weight).cpu().numpy()
            for blended, (src, dst) in zip(result, places, strict=True):
                out[(slice(None), *src)] += blended[(slice(None), *dst)]
            done += len(batch)
            if progress is not None:
                progress(done, len(starts))

    out /= norm  # every voxel is covered by at least one window with weight > 0
    del norm
    return out
