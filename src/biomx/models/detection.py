"""The detector network: MONAI's RetinaNet over a ResNet-FPN backbone (2D or 3D), in the zoo as
`retinanet` (it serves the detection task).

biomx's Trainer calls `model(x)` and then `task.loss(outputs, targets)`, and keeps outputs as one
tensor per batch. So the network returns, per image, per class (`out_dim` classes) and per anchor,
one row (B, C, A, 4*D + 2): the class's logit, then the box regression (2*D), the anchor box itself
(2*D, voxels of the input) and the anchor's feature-map level, these last the same for every class.
The detection task then has all it needs: ATSS matching, hard-negative sampling and the losses
(MONAI's `RetinaNetDetector.compute_loss`), and the box decoding at inference
(`postprocess_detections`), with no branch in the engine and nothing network-specific.

The anchors are `AnchorGeneratorWithAnchorShape`: the same `anchor_shapes` at every level, scaled by
1, 2, 4, ... (one per level); `data.derive_anchor_shapes` picks the shapes from the training boxes.
No pretrained weights (nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import nn

from biomx.models.bounds import Between, InChannels, OutDim, SpatialDims, Units

DEPTHS = {10: ("basic", [1, 1, 1, 1]), 18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]),
          50: ("bottleneck", [3, 4, 6, 3])}  # fmt: skip
CONV1_STRIDE = 2  # the backbone's first convolution; its max-pool halves again


def row_width(spatial_dims: int) -> int:
    """Values per class and anchor: the logit, box regression, the anchor box, its level."""
    return 4 * spatial_dims + 2


def size_divisible(returned_layers: Sequence[int]) -> int:
    """What every input size must divide by: the coarsest feature map's stride (the FPN's extra
    max-pool level included)."""
    return 2 * CONV1_STRIDE * 2 ** max(returned_layers)


class ResNetFPN(nn.Module):
    """A ResNet's stages `layers` (1-4) through a feature pyramid: MONAI's `BackboneWithFPN` without
    its torchvision layer getter (torchvision is not a dependency)."""

    def __init__(self, backbone: nn.Module, layers: list[int], fpn: nn.Module, out_channels: int):
        super().__init__()
        self.stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.act, backbone.maxpool)
        self.stages = nn.ModuleList(getattr(backbone, f"layer{k}") for k in range(1, max(layers) + 1))
        self.layers, self.fpn, self.out_channels = list(layers), fpn, out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        kept: dict[str, torch.Tensor] = {}
        for k, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if k in self.layers:
                kept[str(len(kept))] = x
        return self.fpn(kept)


class RetinaNetRows(nn.Module):
    """RetinaNet whose forward returns (B, C, A, 4*D + 2): per class and anchor the logit, then the
    regression, the anchor and its level (repeated for each class)."""

    def __init__(self, network: nn.Module, anchor_generator: nn.Module, spatial_dims: int, anchors_per_loc: int):
        super().__init__()
        self.network, self.anchor_generator = network, anchor_generator
        self.spatial_dims, self.anchors_per_loc = spatial_dims, anchors_per_loc

    def _reshape(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """(B, A*k, *S) per level -> (B, prod(S)*A, k) per level, MONAI's anchor order."""
        out = []
        for m in maps:
            b, s = m.shape[0], m.shape[2:]
            k = m.shape[1] // self.anchors_per_loc
            v = m.view(b, self.anchors_per_loc, k, *s)
            v = v.permute(0, *range(3, 3 + len(s)), 1, 2)
            out.append(v.reshape(b, -1, k))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.network(x)
        cls_maps, box_maps = head["classification"], head["box_regression"]
        cls, box = self._reshape(cls_maps), self._reshape(box_maps)
        with torch.autocast(x.device.type, enabled=False):
            anchors = self.anchor_generator(x[:1].float(), [m[:1].float() for m in cls_maps])[0]  # (A, 2D)
        levels = torch.cat([torch.full((c.shape[1],), float(i), device=x.device) for i, c in enumerate(cls)])
        logits = torch.cat(cls, 1).float().transpose(1, 2)  # (B, C, A)
        b, c, a = logits.shape
        rest = torch.cat([torch.cat(box, 1).float(), anchors.float().unsqueeze(0).expand(b, -1, -1),
                          levels.view(1, -1, 1).expand(b, -1, -1)], dim=2)  # (B, A, 4D + 1)
        return torch.cat([logits.unsqueeze(-1), rest.unsqueeze(1).expand(b, c, a, rest.shape[-1])], dim=3)


def retinanet(
    in_channels: InChannels = 1,
    out_dim: OutDim = 1,
    spatial_dims: SpatialDims = 2,
    anchor_shapes: list[list[float]] | None = None,
    depth: Annotated[int, Between(10, 50)] = 18,
    width: Units = 32,
    fpn_channels: Units = 64,
    returned_layers: Sequence[int] = (1, 2),
) -> nn.Module:
    """RetinaNet (Lin et al. 2017) with a ResNet-`depth` backbone of `width` channels in its first
    stage, an FPN of `fpn_channels`, feature maps from `returned_layers` plus one max-pool level.

    `out_dim` is the number of box classes; `anchor_shapes` the base anchor sizes (one [size per
    axis] each) at the finest level, doubled at each next level (default: one 16-voxel cube).
    """
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
    from monai.networks.blocks.feature_pyramid_network import (
        FeaturePyramidNetwork,
        LastLevelMaxPool,
    )
    from monai.networks.nets import resnet

    if depth not in DEPTHS:
        raise ValueError(f"depth {depth}: expected one of {', '.join(map(str, DEPTHS))}")
    layers = sorted({int(k) for k in returned_layers})
    if not layers or layers[0] < 1 or layers[-1] > 4:
        raise ValueError(f"returned_layers {list(returned_layers)}: expected values from 1 to 4")
    num_classes = int(out_dim)
    shapes = [[float(v) for v in s] for s in (anchor_shapes or [[16.0] * spatial_dims])]
    if any(len(s) != spatial_dims for s in shapes):
        raise ValueError(f"anchor_shapes {shapes}: each needs {spatial_dims} sizes")
    block, blocks = DEPTHS[depth]
    planes = [width, 2 * width, 4 * width, 8 * width]
    backbone = resnet.ResNet(block=block, layers=blocks, block_inplanes=planes, spatial_dims=spatial_dims,
                             n_input_channels=in_channels, conv1_t_stride=CONV1_STRIDE, conv1_t_size=7,
                             num_classes=1)  # fmt: skip
    expansion = 4 if block == "bottleneck" else 1
    fpn = FeaturePyramidNetwork(spatial_dims=spatial_dims, in_channels_list=[planes[k - 1] * expansion for k in layers],
                                out_channels=fpn_channels, extra_blocks=LastLevelMaxPool(spatial_dims))  # fmt: skip
    features = ResNetFPN(backbone, layers, fpn, fpn_channels)
    network = RetinaNet(spatial_dims=spatial_dims, num_classes=num_classes, num_anchors=len(shapes),
                        feature_extractor=features, size_divisible=size_divisible(layers))  # fmt: skip
    generator = AnchorGeneratorWithAnchorShape(feature_map_scales=[2**i for i in range(len(layers) + 1)],
                                               base_anchor_shapes=shapes)  # fmt: skip
    return RetinaNetRows(network, generator, spatial_dims, len(shapes))
