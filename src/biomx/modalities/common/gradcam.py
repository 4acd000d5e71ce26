"""Grad-CAM heatmaps for CNN classifiers, computed with Captum.

Grad-CAM weights each channel of a convolution layer's output by the mean gradient of the
target logit with respect to that channel, sums the channels and keeps the positive part:
the regions that push the target logit up. We use Captum's `LayerGradCam` for the maths
and only add the plumbing around it: picking the layer, resolving targets, upsampling to
the input size, normalising each map to [0, 1] and leaving the model as we found it.

Binary models with a single output logit: Grad-CAM explains the positive-class logit
(target 0), i.e. "what makes the model say positive". The negative class has no logit of
its own to explain.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from biomx.errors import BiomxError

_CONV_TYPES = (nn.Conv2d, nn.Conv3d)


def find_last_conv(model: nn.Module) -> nn.Module:
    """Return the last 2D/3D convolution of a model, in module registration order.

    Registration order matches forward order for the usual sequential CNNs (ResNet,
    DenseNet, VGG); for exotic models pass the layer to `gradcam` explicitly.

    Args:
        model: any `nn.Module`.

    Returns:
        The last `nn.Conv2d` or `nn.Conv3d` found by `model.modules()`.

    Raises:
        BiomxError: if the model has no convolution layer.
    """
    last = None
    for module in model.modules():
        if isinstance(module, _CONV_TYPES):
            last = module
    if last is None:
        raise BiomxError("model has no convolution layer; Grad-CAM needs a CNN")
    return last


def _resolve_targets(logits: Tensor, targets: Tensor | int | None) -> Tensor:
    """Turn the user's `targets` into one class index per image, checked against K."""
    batch, num_outputs = logits.shape
    if targets is None:
        # A single logit has no argmax to take: explain the positive class.
        if num_outputs == 1:
            return torch.zeros(batch, dtype=torch.long, device=logits.device)
        return logits.argmax(dim=1)
    if isinstance(targets, int):
        resolved = torch.full((batch,), targets, dtype=torch.long, device=logits.device)
    else:
        resolved = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
        if resolved.numel() != batch:
            raise BiomxError(
                f"got {resolved.numel()} Grad-CAM targets for {batch} images; "
                "pass one class index per image, a single int, or None"
            )
    bad = (resolved < 0) | (resolved >= num_outputs)
    if bad.any():
        value = int(resolved[bad][0])
        if num_outputs == 1:
            raise BiomxError(
                f"Grad-CAM target {value} is invalid for a single-logit (binary) model: "
                "it explains the positive-class logit, so use target 0 or None"
            )
        raise BiomxError(
            f"Grad-CAM target {value} is out of range for a model with {num_outputs} outputs "
            f"(valid: 0..{num_outputs - 1})"
        )
    return resolved


def _normalise(cam: Tensor) -> Tensor:
    """Scale each map to [0, 1] by its own peak; an all-zero map stays all zero."""
    cam = torch.nan_to_num(cam.float()).clamp_min(0.0)
    spatial = tuple(range(1, cam.dim()))
    peak = cam.amax(dim=spatial, keepdim=True)
    # clamp_min keeps 0 / 0 out: a zero map divided by a tiny number is still zero.
    return cam / peak.clamp_min(1e-12)


def gradcam(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | int | None = None,
    *,
    layer: nn.Module | None = None,
) -> Tensor:
    """Compute Grad-CAM heatmaps, one per image, at the input resolution.

    The model is run in eval mode (so dropout and batch-norm behave as at inference) with
    gradients enabled even inside a caller's `torch.no_grad()`. Every submodule's
    training flag is restored afterwards; parameters' `requires_grad` and `.grad` are not
    touched (Captum uses `torch.autograd.grad`, which does not accumulate into `.grad`).

    Args:
        model: a CNN whose forward maps (B, C, H, W) (or (B, C, D, H, W)) to (B, K) logits.
        images: the input batch, already preprocessed as the model expects.
        targets: class index per image (tensor of shape (B,)), one int for all images, or
            None for the predicted class. For a single-logit (binary) model the only
            target is 0, the positive-class logit, which is also what None explains.
        layer: the convolution layer to explain; defaults to `find_last_conv(model)`.

    Returns:
        A float tensor of shape (B, H, W) (or (B, D, H, W) for 3D inputs) on the images'
        device, with values in [0, 1]; each non-zero map has its maximum at 1.

    Raises:
        BiomxError: if the images are not 4D/5D, the model returns no (B, K) logits, the
            targets are invalid, or the model has no convolution layer.
    """
    if images.dim() not in (4, 5):
        raise BiomxError(
            f"Grad-CAM needs a batch of shape (B, C, H, W) or (B, C, D, H, W), "
            f"got {tuple(images.shape)}"
        )
    if layer is None:
        layer = find_last_conv(model)
    was_training = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            # Our own leaf copy, so the caller's tensor never gains requires_grad; it also
            # lets gradients reach the layer when every parameter is frozen.
            inputs = images.detach().clone().requires_grad_(True)
            with torch.no_grad():
                logits = model(inputs)
            if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
                raise BiomxError(
                    f"Grad-CAM needs a model that returns (B, K) logits, got shape "
                    f"{tuple(logits.shape)} for {images.shape[0]} images"
                )
            target = _resolve_targets(logits, targets)
            cam = LayerGradCam(model, layer).attribute(
                inputs, target=target, relu_attributions=True
            )
            mode = "bilinear" if images.dim() == 4 else "trilinear"
            cam = LayerAttribution.interpolate(cam, tuple(images.shape[2:]), mode)
    finally:
        # Per module, not model.train(flag): a training model may hold frozen eval-mode
        # parts (e.g. a batch-norm backbone) that must stay that way.
        for module, training in was_training.items():
            module.training = training
    return _normalise(cam.detach().squeeze(1))


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a jet-coloured heatmap over an image, for figures and reports.

    Args:
        image: (C, H, W) or (H, W) array in [0, 1]. One channel is shown as grey, three as
            RGB; any other channel count is averaged to grey (e.g. several MRI sequences,
            which have no natural colour mapping).
        heatmap: (H, W) array in [0, 1], e.g. one map from `gradcam`.
        alpha: weight of the heatmap colour, in [0, 1]; 0 returns the plain image.

    Returns:
        An (H, W, 3) uint8 RGB picture.

    Raises:
        BiomxError: if the shapes do not match or alpha is outside [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise BiomxError(f"overlay alpha must be in [0, 1], got {alpha}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise BiomxError(f"overlay needs a (C, H, W) image, got shape {img.shape}")
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    elif img.shape[0] != 3:
        img = np.repeat(img.mean(axis=0, keepdims=True), 3, axis=0)
    rgb = np.clip(np.nan_to_num(img), 0.0, 1.0).transpose(1, 2, 0)
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.shape != rgb.shape[:2]:
        raise BiomxError(f"heatmap shape {heat.shape} does not match image size {rgb.shape[:2]}")
    colour = matplotlib.colormaps["jet"](heat)[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * colour
    return np.round(blended * 255.0).astype(np.uint8)


def gallery_section(examples: list[dict]) -> list[dict]:
    """The report section of explained images: each image beside its Grad-CAM overlay.

    Args:
        examples: dicts with `image` (C, H, W) in [0, 1], `heatmap` (H, W) in [0, 1] or None, and
            `caption`.
    """
    if not examples:
        return []
    items = []
    for example in examples:
        image = np.asarray(example["image"], dtype=np.float32)
        plain = overlay(image, np.zeros(image.shape[-2:], dtype=np.float32), alpha=0.0)
        pictures = [(plain, "image")]
        if example.get("heatmap") is not None:
            pictures.append((overlay(image, example["heatmap"]), "Grad-CAM overlay"))
        items.append({"pictures": pictures, "caption": example.get("caption", "")})
    return [{"title": "Explanations", "text": "Each image with its Grad-CAM overlay: red marks the regions "
             "that raised the explained logit most.", "gallery": items}]  # fmt: skip
