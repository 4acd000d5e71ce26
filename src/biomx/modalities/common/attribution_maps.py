"""Two attribution maps for images and volumes, for the explanation checks (`biomx.explain.sanity`).

Grad-CAM (the report's gallery method, at the model's declared CAM layer) and occlusion (Captum's
`Occlusion`: a patch of the input set to 0, i.e. the training mean after normalisation, and the
drop of the explained output recorded on the patch). The occlusion window is sized from the input:
`OCCLUSION_CELLS` patches along each axis (8 x 8 for an image, 4 x 4 x 4 for a volume), so it costs
64 forward passes of the checked batch whatever the resolution. Both keep the positive part (the
regions that raise the explained output), so the two maps compare like for like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from captum.attr import Occlusion
from torch import Tensor, nn

from biomx.modalities.common.gradcam import cam_layer, gradcam

OCCLUSION_CELLS = {2: 8, 3: 4}  # patches along each spatial axis
PER_EVAL = 4  # occluded batches per forward pass


def occlusion_window(shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial window (= stride) for inputs of spatial `shape`: `OCCLUSION_CELLS` patches per axis."""
    cells = OCCLUSION_CELLS.get(len(shape), 4)
    return tuple(max(1, math.ceil(n / cells)) for n in shape)


def occlusion_map(model: nn.Module, x: Tensor, columns: Tensor) -> Tensor:
    """(N, *spatial) positive part of the occlusion attribution of each sample's output column,
    summed over channels."""
    window = occlusion_window(tuple(x.shape[2:]))
    with torch.no_grad():
        attr = Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], *window),
                                          strides=(x.shape[1], *window), baselines=0.0, target=columns,
                                          perturbations_per_eval=PER_EVAL)  # fmt: skip
    return attr.sum(dim=1).clamp_min(0.0).detach()


def map_methods(declared: Sequence[str]) -> dict[str, Any]:
    """{"Grad-CAM": ..., "occlusion": ...} for a CNN whose CAM layers are `declared` (deepest first)."""

    def grad_cam(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> Tensor:
        return gradcam(model, x, columns, layer=cam_layer(model, x, declared))

    def occlusion(model: nn.Module, task: Any, x: Tensor, columns: Tensor) -> Tensor:
        return occlusion_map(model, x, columns)

    return {"Grad-CAM": grad_cam, "occlusion": occlusion}
