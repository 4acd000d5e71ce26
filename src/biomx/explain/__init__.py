"""Explanations for trained models: Grad-CAM (images), attributions and motifs (sequences),
atom attributions (molecules)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the model in eval mode, then restore every submodule's own training flag."""
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        # Per module, not model.train(flag): frozen eval-mode parts must stay that way.
        for module, training in was_training.items():
            module.training = training


from biomx.explain.gradcam import find_last_conv, gradcam, overlay  # noqa: E402

__all__ = ["eval_mode", "find_last_conv", "gradcam", "overlay"]
