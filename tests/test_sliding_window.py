"""Tests for biomx.engine.sliding_window: bounded-memory whole-image inference."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from biomx.engine.sliding_window import sliding_window_predict, window_starts
from biomx.errors import ConfigError

# Small convolutions: extra intra-op threads only add synchronisation on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net(spatial_dims: int, in_channels: int = 2, out_channels: int = 3, seed: int = 0) -> nn.Module:
    """A random two-layer conv net: its output depends on position within the window (zero padding)."""
    torch.manual_seed(seed)
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return nn.Sequential(conv(in_channels, 4, 3, padding=1), nn.Tanh(), conv(4, out_channels, 3, padding=1)).eval()


def random_image(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def monai_reference(net: nn.Module, image: np.ndarray, patch: tuple[int, ...], overlap: float, **kw) -> np.ndarray:
    with torch.inference_mode():
        ref = sliding_window_inference(
            torch.from_numpy(image)[None], patch, 3, net, overlap=overlap, mode="gaussian", **kw
        )
    return ref[0].numpy()


@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        ((2, 37, 29), (16, 12), 0.5),  # 2D, sizes not multiples of the patch
        ((2, 19, 23, 13), (8, 10, 6), 0.5),  # 3D
        ((2, 21, 17, 11), (8, 8, 8), 0.25),  # 3D, another overlap
    ],
)
def test_matches_monai_gaussian(shape: tuple[int, ...], patch: tuple[int, ...], overlap: float) -> None:
    net = tiny_net(len(patch))
    image = random_image(shape)
    ours = sliding_window_predict(
        net, image, patch, out_channels=3, overlap=overlap, batch_size=3, postprocess=None
    )
    ref = monai_reference(net, image, patch, overlap)
    assert ours.shape == (3, *shape[1:]) and ours.dtype == np.float32
    diff = float(np.abs(ours - ref).max())
    assert diff < 1e-5, diff
    # The windows disagree (the net sees zero padding at window edges), so blending matters.
    assert float(np.abs(ref).max()) > 0.1


def test_matches_monai_when_the_image_is_smaller_than_the_patch() -> None:
    """Axes shorter than the patch are padded (centred, with the image minimum) and cropped back."""
    net = tiny_net(3)
    image = random_image((2, 9, 20, 5), seed=3) + 2.0  # minimum well away from 0
    patch = (12, 8, 8)
    ours = sliding_window_predict(net, image, patch, out_channels=3, batch_size=2, postprocess=None)
    ref = monai_reference(net, image, patch, 0.5, cval=float(image.min()))
    assert ours.shape == (3, 9, 20, 5)
    assert float(np.abs(ours - ref).max()) < 1e-5
    # Padding with 0 instead would differ: the fill value reaches the network.
    zero_padded = monai_reference(net, image, patch, 0.5, cval=0.0)
    assert float(np.abs(ours - zero_padded).max()) > 1e-3


def test_constant_weighting_of_identity_reproduces_the_input() -> None:
    image = random_image((2, 23, 17, 10), seed=4)
    out = sliding_window_predict(
        nn.Identity(), image, (8, 8, 8), out_channels=2, weighting="constant", postprocess=None
    )
    np.testing.assert_allclose(out, image, rtol=1e-6, atol=1e-6)


def test_default_softmax_gives_probabilities() -> None:
    net = tiny_net(2)
    out = sliding_window_predict(net, random_image((2, 30, 25)), (16, 16), out_channels=3)
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_memmap_buffer_equals_in_memory(tmp_path: Path) -> None:
    net = tiny_net(3)
    image = random_image((2, 20, 18, 9), seed=5)
    in_memory = sliding_window_predict(net, image, (8, 8, 8), out_channels=3)
    on_disk = sliding_window_predict(
        net, image, (8, 8, 8), out_channels=3, memmap_dir=tmp_path, memmap_above_bytes=0
    )
    assert isinstance(on_disk, np.memmap) and not isinstance(in_memory, np.memmap)
    np.testing.assert_array_equal(on_disk, in_memory)
    assert list(tmp_path.iterdir()) == []  # the temporary file has no name left behind

    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the result is mapped from a nameless file in memmap_dir, freed with it

        def mapped_here() -> int:
            return sum(str(tmp_path) in line for line in maps.read_text().splitlines())

        assert mapped_here() == 1  # the weight map's file is gone already
        del on_disk
        gc.collect()
        assert mapped_here() == 0


def test_read_only_memmap_input(tmp_path: Path) -> None:
    image = random_image((2, 24, 20), seed=6)
    path = tmp_path / "image.npy"
    np.save(path, image)
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    net = tiny_net(2)
    from_map = sliding_window_predict(net, mapped, (16, 16), out_channels=3)
    from_tensor = sliding_window_predict(net, torch.from_numpy(image), (16, 16), out_channels=3)
    np.testing.assert_array_equal(from_map, from_tensor)


def test_bf16_autocast_on_cpu_runs_and_is_close() -> None:
    net = tiny_net(3)
    image = random_image((2, 16, 12, 10), seed=7)
    full = sliding_window_predict(net, image, (8, 8, 8), out_channels=3)
    half = sliding_window_predict(
        net, image, (8, 8, 8), out_channels=3,
        autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    )
    assert half.dtype == np.float32
    diff = float(np.abs(half - full).max())
    assert 0 < diff < 0.05  # bf16 changed the arithmetic, but only a little


def test_window_count_and_batches() -> None:
    calls: list[int] = []
    reports: list[tuple[int, int]] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x[:, :1].repeat(1, 2, 1, 1, 1)

    shape, patch, overlap, batch = (1, 30, 21, 8), (8, 8, 8), 0.5, 4
    sliding_window_predict(
        net, random_image(shape), patch, out_channels=2, overlap=overlap, batch_size=batch,
        progress=lambda done, total: reports.append((done, total)),
    )
    # Stride int(8 * 0.5) = 4, the last window flush with the edge: ceil((n - 8) / 4) + 1 per axis.
    per_axis = [math.ceil((n - 8) / 4) + 1 for n in shape[1:]]
    expected = math.prod(per_axis)
    assert per_axis == [7, 5, 1]
    assert len(window_starts(shape[1:], patch, overlap)) == expected
    assert sum(calls) == expected and max(calls) == batch
    assert len(calls) == math.ceil(expected / batch)
    assert reports[-1] == (expected, expected)
    assert [done for done, _ in reports] == list(np.cumsum(calls))


def test_last_window_is_flush_with_the_edge() -> None:
    starts = window_starts((37, 29), (16, 12), 0.5)
    assert {s[0] for s in starts} == {0, 8, 16, 21}
    assert {s[1] for s in starts} == {0, 6, 12, 17}


@pytest.mark.parametrize(
    ("patch", "kwargs", "match"),
    [
        ((8, 8), {}, "patch_size: \\[8, 8\\] has 2 values but the image"),
        ((8, 0, 8), {}, "patch_size: expected positive integers"),
        ((8, 8, 8), {"overlap": 1.0}, "overlap"),
        ((8, 8, 8), {"batch_size": 0}, "sw_batch_size"),
        ((8, 8, 8), {"weighting": "linear"}, "weighting"),
    ],
)
def test_bad_arguments_raise_one_line(patch: tuple[int, ...], kwargs: dict, match: str) -> None:
    image = random_image((1, 10, 10, 10))
    with pytest.raises(ConfigError, match=match) as info:
        sliding_window_predict(nn.Identity(), image, patch, out_channels=1, **kwargs)
    assert "\n" not in str(info.value)


def test_wrong_output_channels_is_reported() -> None:
    net = tiny_net(2, in_channels=1, out_channels=3)
    with pytest.raises(ValueError, match="returned shape \\(2, 3, 8, 8\\).*expected \\(2, 2, 8, 8\\)"):
        sliding_window_predict(net, random_image((1, 8, 12)), (8, 8), out_channels=2, batch_size=2)
