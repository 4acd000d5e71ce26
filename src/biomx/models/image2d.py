"""2D image classifiers: a small CNN for quick work, and MONAI's ResNets and DenseNet.

Each builder takes the same core arguments (`in_channels`, `out_dim`, `spatial_dims`) so a
config can swap models without touching anything else.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

from monai.networks.nets import DenseNet121, ResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import Tensor, nn

from biomx.errors import ConfigError
from biomx.models.bounds import Between, InChannels, OutDim, Rate, SpatialDims

# Each network's class-activation layers (module paths, deepest first; see registry.cam_layers):
# the outputs of its last blocks, after their norms, activations and residual adds, where the
# map is the evidence the head pools. A conv inside the last block (before its batch norm and
# residual add) gave all-zero maps for trained ResNets.
SMALL_CNN_CAM = ("last_stage",)
SMALL_CNN_MAX_CHANNELS = 8192  # a 3x3 conv from 4096 to 8192 channels already holds 300M weights
RESNET_CAM = ("layer4", "layer3", "layer2", "layer1")
DENSENET_CAM = ("class_layers.relu", "features.denseblock3", "features.denseblock2", "features.denseblock1")

_RESNET_LAYOUTS = {
    18: (ResNetBlock, [2, 2, 2, 2]),
    34: (ResNetBlock, [3, 4, 6, 3]),
    50: (ResNetBottleneck, [3, 4, 6, 3]),
}


def _norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"model.args.norm: expected one of batch, group, none; got {kind!r}")


def small_cnn(
    in_channels: InChannels = 1,
    out_dim: OutDim = 2,
    spatial_dims: SpatialDims = 2,
    width: Annotated[int, Between(1, 1024)] = 32,
    depth: Annotated[int, Between(1, 8)] = 3,
    dropout: Rate = 0.1,
    norm: str = "batch",
) -> nn.Module:
    """A VGG-style CNN: `depth` stages of two 3x3 convs + pooling, then a linear head.

    Trains in seconds on CPU at 28-64 px; the demo's model. Width doubles per stage, up to
    `SMALL_CNN_MAX_CHANNELS` in the last one.
    """
    last = width * 2 ** (depth - 1)
    if last > SMALL_CNN_MAX_CHANNELS:  # checked before any layer is allocated
        raise ConfigError(f"model.args.depth: small_cnn's last stage would have width * 2**(depth - 1) = "
                          f"{last} channels (width {width}, depth {depth}); at most "
                          f"{SMALL_CNN_MAX_CHANNELS}: lower depth or width")  # fmt: skip
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    gap = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
    layers: list[nn.Module] = []
    channels = in_channels
    for stage in range(depth):
        out = width * 2**stage
        for _ in range(2):
            layers += [
                conv(channels, out, 3, padding=1, bias=norm == "none"),
                _norm(norm, out, spatial_dims),
                nn.ReLU(inplace=True),
            ]
            channels = out
        if stage < depth - 1:  # keep the last stage's resolution for class-activation maps
            layers.append(pool(2))
    # The last stage's activation is named (SMALL_CNN_CAM); the rest keep their positions as
    # names, so the weights' keys are those of a plain nn.Sequential.
    names = [str(i) for i in range(len(layers))]
    names[-1] = SMALL_CNN_CAM[0]
    layers += [gap(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, out_dim)]
    names += [str(i) for i in range(len(names), len(layers))]
    return nn.Sequential(OrderedDict(zip(names, layers, strict=True)))


def resnet(
    depth: int = 18,
    in_channels: InChannels = 1,
    out_dim: OutDim = 2,
    spatial_dims: SpatialDims = 2,
    stem: str = "imagenet",
    widen_factor: Annotated[float, Between(0.125, 8.0)] = 1.0,
) -> nn.Module:
    """MONAI's ResNet (He et al. 2016) for 2D or 3D input.

    Args:
        depth: 18, 34 or 50.
        stem: "imagenet" = 7x7 stride-2 conv + max-pool (inputs >= 64 px);
            "small" = 3x3 stride-1 conv, no pool (28-48 px inputs such as MedMNIST).
    """
    if depth not in _RESNET_LAYOUTS:
        raise ConfigError(f"model.args.depth: expected one of 18, 34, 50; got {depth!r}")
    if stem not in ("imagenet", "small"):
        raise ConfigError(f"model.args.stem: expected 'imagenet' or 'small'; got {stem!r}")
    block, layers = _RESNET_LAYOUTS[depth]
    small = stem == "small"
    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=3 if small else 7,
        conv1_t_stride=1 if small else 2,
        no_max_pool=small,
        widen_factor=widen_factor,
        num_classes=out_dim,
    )


def resnet18(
    in_channels: InChannels = 1, out_dim: OutDim = 2, spatial_dims: SpatialDims = 2, stem: str = "imagenet"
) -> nn.Module:
    """ResNet-18 (11M parameters)."""
    return resnet(18, in_channels, out_dim, spatial_dims, stem)


def resnet34(
    in_channels: InChannels = 1, out_dim: OutDim = 2, spatial_dims: SpatialDims = 2, stem: str = "imagenet"
) -> nn.Module:
    """ResNet-34 (21M parameters)."""
    return resnet(34, in_channels, out_dim, spatial_dims, stem)


def resnet50(
    in_channels: InChannels = 1, out_dim: OutDim = 2, spatial_dims: SpatialDims = 2, stem: str = "imagenet"
) -> nn.Module:
    """ResNet-50 (bottleneck blocks, 23M parameters)."""
    return resnet(50, in_channels, out_dim, spatial_dims, stem)


def densenet121(
    in_channels: InChannels = 1, out_dim: OutDim = 2, spatial_dims: SpatialDims = 2, dropout: Rate = 0.0
) -> nn.Module:
    """MONAI's DenseNet-121 (Huang et al. 2017), the CheXNet backbone."""
    return DenseNet121(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_dim, dropout_prob=dropout
    )


class FlipAveraged(nn.Module):
    """Test-time augmentation: the mean of a model's outputs over flipped copies of its input.

    `flips` lists the image axes to mirror ("hflip": width, "vflip": height); every combination
    is one view (two flips: 4 views, the identity included). Outputs (logits) are averaged, as
    `StrandAveraged` does for DNA, so the task turns the mean logit into its prediction and an
    exported graph carries the same views. For a model trained with the same flips as
    augmentations the views are equally likely inputs, and their mean is a steadier prediction.
    Row outputs only: a dense output (a mask) would have to be flipped back first.
    """

    def __init__(self, model: nn.Module, flips: list[str]) -> None:
        super().__init__()
        self.model = model
        axes = [{"hflip": -1, "vflip": -2}[f] for f in flips]
        self.views = [[a for k, a in enumerate(axes) if mask >> k & 1] for mask in range(2 ** len(axes))]

    def forward(self, x: Tensor) -> Tensor:
        total = self.model(x)
        for dims in self.views[1:]:  # the first view is the identity
            total = total + self.model(x.flip(dims))
        return total / len(self.views)
