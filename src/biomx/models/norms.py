"""BatchNorm -> GroupNorm, for training that needs per-sample gradients (DP-SGD).

BatchNorm normalises with statistics of the whole batch, so one sample's gradient depends on the
others; GroupNorm normalises each sample on its own. A run that converted its model records it in
run.json's model entry (`"batchnorm": "group"`); `biomx.models.registry.build_recorded` applies
it again wherever the run's model is rebuilt (resume, evaluate, predict, export).
"""

from __future__ import annotations

from torch import Tensor, nn

GROUP_CHOICES = (32, 16, 8, 4, 2, 1)
MIN_PER_GROUP = 4  # channels per group: fewer makes GroupNorm an instance norm of a few channels


def groups_for(channels: int) -> int:
    """The most groups of 32, 16, 8, 4, 2, 1 that divide `channels` with at least 4 channels each
    (64 channels: 16 groups; 256: 32; 12: 2; 3: 1)."""
    return next((g for g in GROUP_CHOICES if channels % g == 0 and channels // g >= MIN_PER_GROUP), 1)


class GroupNormOut(nn.Module):
    """GroupNorm whose output is a tensor of its own (a copy): networks that add a residual in
    place onto a norm's output (`out += residual`, as MONAI's ResNet does) then still train under
    Opacus' per-sample gradient hooks, which hand on a hooked layer's output as a view that must
    not be modified in place."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps, affine=affine)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x).clone()


def batchnorm_layers(model: nn.Module) -> list[str]:
    """The module paths of every BatchNorm layer (1d/2d/3d, synchronised too)."""
    return [path for path, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_to_groupnorm(model: nn.Module) -> int:
    """Replace every BatchNorm of `model` in place by a GroupNorm of `groups_for(channels)` groups
    (same eps, affine if the BatchNorm was; a `GroupNormOut`); returns how many were replaced. The new layers start
    at weight 1, bias 0: convert before training (and before the optimizer is built)."""
    paths = [path for path in batchnorm_layers(model) if path]  # (a bare BatchNorm is no model)
    for path in paths:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        old = parent.get_submodule(name)
        channels = old.num_features
        setattr(parent, name, GroupNormOut(groups_for(channels), channels, eps=old.eps, affine=old.affine))
    return len(paths)
