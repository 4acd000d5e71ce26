"""Segmentation networks (2D or 3D): MONAI's UNet, SegResNet and SwinUNETR.

Every builder takes `in_channels`, `out_dim` (classes including background) and `spatial_dims`
first, so a config swaps models without touching anything else, and returns a module mapping
(N, C, *S) to logits (N, out_dim, *S) of the same spatial size. Each model downsamples by a
fixed factor, so every input size must be divisible by it: `required_divisor` gives that factor
so a patch size can be checked before anything is built or trained. Lists from YAML become
tuples; a bad value raises ConfigError naming `model.args.<key>`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Annotated, Any

from monai.networks.nets import SegResNet, SwinUNETR, UNet
from torch import nn

from biomx.errors import ConfigError
from biomx.models.bounds import Between, InChannels, OutDim, Rate, SpatialDims


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ConfigError(f"model.args.spatial_dims: expected 2 or 3; got {spatial_dims!r}")


def _ints(key: str, value: Any, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """`value` (a list from YAML or a tuple) as a tuple of ints >= minimum, else ConfigError."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"model.args.{key}: expected a list of integers; got {value!r}")
    items = tuple(value)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in items):
        raise ConfigError(f"model.args.{key}: expected a list of integers >= {minimum}; got {list(items)}")
    if length is not None and len(items) != length:
        raise ConfigError(f"model.args.{key}: expected {length} values; got {len(items)} ({list(items)})")
    return items


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model.args.{key}: expected an integer >= {minimum}; got {value!r}")
    return value


def _rate(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ConfigError(f"model.args.{key}: expected a number in [0, 1); got {value!r}")
    return float(value)


def unet(
    in_channels: InChannels = 1,
    out_dim: OutDim = 2,
    spatial_dims: SpatialDims = 3,
    channels: Annotated[Sequence[int], Between(1, 4096)] = (16, 32, 64, 128, 256),
    strides: Annotated[Sequence[int], Between(1, 8)] = (2, 2, 2, 2),
    num_res_units: Annotated[int, Between(0, 16)] = 2,
    norm: str = "instance",
    dropout: Rate = 0.0,
) -> nn.Module:
    """MONAI's residual UNet (Kerfoot et al. 2018), the usual first baseline.

    Args:
        channels: feature channels per level, coarsest last.
        strides: downsampling per level (one fewer than `channels`); inputs must be divisible by
            their product.
        num_res_units: residual units per block (0 = plain convolutions).
        norm: "instance" (robust to the small batches of 3D work) or "batch".
    """
    _check_dims(spatial_dims)
    channels = _ints("channels", channels)
    if len(channels) < 2:
        raise ConfigError(f"model.args.channels: expected at least 2 levels; got {list(channels)}")
    strides = _ints("strides", strides, length=len(channels) - 1)
    num_res_units = _int("num_res_units", num_res_units, 0)
    if norm not in ("instance", "batch"):
        raise ConfigError(f"model.args.norm: expected 'instance' or 'batch'; got {norm!r}")
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_dim,
        channels=channels,
        strides=strides,
        num_res_units=num_res_units,
        norm=norm.upper(),
        dropout=_rate("dropout", dropout),
    )


def segresnet(
    in_channels: InChannels = 1,
    out_dim: OutDim = 2,
    spatial_dims: SpatialDims = 3,
    init_filters: Annotated[int, Between(8, 512)] = 16,
    blocks_down: Annotated[Sequence[int], Between(1, 64)] = (1, 2, 2, 4),
    blocks_up: Annotated[Sequence[int], Between(1, 64)] = (1, 1, 1),
    dropout: Rate = 0.0,
) -> nn.Module:
    """MONAI's SegResNet (Myronenko 2018, BraTS winner), without the VAE branch.

    Args:
        init_filters: channels of the first level (a multiple of 8: group norm uses 8 groups);
            they double at each level.
        blocks_down: residual blocks per encoder level; inputs must be divisible by
            2 ** (len(blocks_down) - 1).
        blocks_up: residual blocks per decoder level (one fewer than `blocks_down`).
    """
    _check_dims(spatial_dims)
    init_filters = _int("init_filters", init_filters, 8)
    if init_filters % 8:
        raise ConfigError(f"model.args.init_filters: must be a multiple of 8 (group norm); got {init_filters}")
    blocks_down = _ints("blocks_down", blocks_down)
    if len(blocks_down) < 2:
        raise ConfigError(f"model.args.blocks_down: expected at least 2 levels; got {list(blocks_down)}")
    blocks_up = _ints("blocks_up", blocks_up, length=len(blocks_down) - 1)
    dropout = _rate("dropout", dropout)
    return SegResNet(
        spatial_dims=spatial_dims,
        init_filters=init_filters,
        in_channels=in_channels,
        out_channels=out_dim,
        dropout_prob=dropout or None,
        blocks_down=blocks_down,
        blocks_up=blocks_up,
    )


def swin_unetr(
    in_channels: InChannels = 1,
    out_dim: OutDim = 2,
    spatial_dims: SpatialDims = 3,
    feature_size: Annotated[int, Between(12, 768)] = 24,
    depths: Annotated[Sequence[int], Between(1, 64)] = (2, 2, 2, 2),
    num_heads: Annotated[Sequence[int], Between(1, 256)] = (3, 6, 12, 24),
    window_size: Annotated[int, Between(1, 64)] = 7,
    dropout: Rate = 0.0,
    use_checkpoint: bool = False,
) -> nn.Module:
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022): a Swin transformer encoder, a CNN decoder.

    Any input size divisible by 32 works (no fixed image size). Heavier than the CNNs; prefer
    a GPU.

    Args:
        feature_size: embedding width (a multiple of 12); doubles at each of the 4 stages.
        depths: Swin blocks per stage (4 values).
        num_heads: attention heads per stage (4 values), each dividing that stage's width.
        window_size: attention window (voxels of the feature map).
        dropout: dropout rate after the patch embedding and in the MLPs.
        use_checkpoint: gradient checkpointing: less memory, slower training.
    """
    _check_dims(spatial_dims)
    feature_size = _int("feature_size", feature_size, 12)
    if feature_size % 12:
        raise ConfigError(f"model.args.feature_size: must be a multiple of 12; got {feature_size}")
    depths = _ints("depths", depths, length=4)
    num_heads = _ints("num_heads", num_heads, length=4)
    for stage, heads in enumerate(num_heads):
        width = feature_size * 2**stage
        if width % heads:
            raise ConfigError(
                f"model.args.num_heads: stage {stage} has width {width}, not divisible by {heads} heads"
            )
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=_int("window_size", window_size, 1),
        feature_size=feature_size,
        drop_rate=_rate("dropout", dropout),
        use_checkpoint=bool(use_checkpoint),
        spatial_dims=spatial_dims,
    )


def required_divisor(name: str, args: dict[str, Any]) -> int:
    """The factor every input spatial size must be divisible by, for model `name` with `args`.

    Missing arguments take the builder's defaults; 1 for a model without such a constraint
    (or an unknown name). Lets `data.volume.patch_size` be checked with one clear message
    before a model is built. Training also needs more than one voxel at the coarsest level
    (instance norm), so a patch should be at least twice the divisor along each axis.
    """
    builders = {"unet": unet, "segresnet": segresnet, "swin_unetr": swin_unetr}
    if name not in builders:
        return 1
    defaults = {k: p.default for k, p in inspect.signature(builders[name]).parameters.items()}
    merged = {**defaults, **args}
    if name == "unet":
        return math.prod(_ints("strides", merged["strides"]))
    if name == "segresnet":
        return 2 ** (len(_ints("blocks_down", merged["blocks_down"])) - 1)
    return 32  # swin_unetr: patch embedding (2) then 4 patch mergings (2 each)
