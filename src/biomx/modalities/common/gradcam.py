"""Grad-CAM heatmaps for CNN classifiers, computed with Captum.

Grad-CAM weights each channel of a convolution layer's output by the mean gradient of the
target logit with respect to that channel, sums the channels and keeps the positive part:
the regions that push the target logit up. We use Captum's `LayerGradCam` for the maths
and only add the plumbing around it: picking the layer, resolving targets, upsampling to
the input size, normalising each map to [0, 1] and leaving the model as we found it.

The layer is the output of the network's last block (a zoo entry's `cam_layers`, e.g. a
ResNet's `layer4`): it feeds global pooling and the linear head, so its map is the
class-activation map itself, never all zero while the explained logit exceeds its bias. The
last convolution (`find_last_conv`) is only a fallback for models that declare nothing: in a
ResNet it sits before the batch norm and the residual add, and a trained ResNet-18 gave
all-zero maps there for every confident positive.

Binary models with a single output logit: target 0 with sign +1 explains the positive class;
sign -1 (the negated logit) explains the negative class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from biomx.errors import BiomxError
from biomx.explain import eval_mode

_CONV_TYPES = (nn.Conv2d, nn.Conv3d)
# How many cells along every axis (or the input's size, if smaller) a layer's map needs. The last
# block's output feeds global pooling and the linear head, so its map is the class-activation map
# itself, never blank where the explained logit has evidence: it is used whenever it is a map at
# all (MIN_LAST_BLOCK_CELLS). Below that (a ResNet's layer4 is 1^3 for a 28^3 volume with the
# stride-2 stem: one number), the deepest earlier layer with MIN_CAM_CELLS is used.
MIN_LAST_BLOCK_CELLS = 2
MIN_CAM_CELLS = 4


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


def _module_path(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise BiomxError(f"Grad-CAM layer {path!r} is not a module of the model; declare the path of "
                         "its last block's output (see model.named_modules())") from None  # fmt: skip


def _output_sizes(model: nn.Module, modules: list[nn.Module], x: Tensor) -> dict[nn.Module, tuple[int, ...]]:
    """The spatial size of each module's output for one input of `x` (eval mode, no gradients)."""
    sizes: dict[nn.Module, tuple[int, ...]] = {}

    def record(module: nn.Module, _: Any, out: Any) -> None:  # returns None: the output is kept
        if isinstance(out, Tensor):
            sizes[module] = tuple(out.shape[2:])

    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        with eval_mode(model), torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def cam_layer(model: nn.Module, x: Tensor, declared: Sequence[str] = ()) -> nn.Module:
    """The layer to explain for inputs shaped like `x`.

    Args:
        model: the network (eval/training flags are restored).
        x: a batch of its inputs; one of them is run to measure each candidate's map.
        declared: module paths inside the model (for `get_submodule`), deepest first: the
            outputs of its last blocks (a zoo entry's `cam_layers`). The first is used if its
            map keeps `MIN_LAST_BLOCK_CELLS` cells along every axis; else the first of the rest
            that keeps `MIN_CAM_CELLS`; else the last listed.

    Without declared paths (a user's model): the last convolution that keeps `MIN_CAM_CELLS`,
    else `find_last_conv(model)`.

    Raises:
        BiomxError: a declared path names no module, or the model has no convolution.
    """
    if declared:
        candidates = [_module_path(model, path) for path in declared]
    else:
        candidates = [m for m in model.modules() if isinstance(m, _CONV_TYPES)][::-1]
    sizes = _output_sizes(model, candidates, x)

    def keeps(module: nn.Module, cells: int) -> bool:
        wanted = [min(cells, n) for n in x.shape[2:]]
        return module in sizes and all(s >= w for s, w in zip(sizes[module], wanted, strict=False))

    if declared and keeps(candidates[0], MIN_LAST_BLOCK_CELLS):
        return candidates[0]
    fine = [module for module in candidates if keeps(module, MIN_CAM_CELLS)]
    if fine:
        return fine[0]
    return candidates[-1] if declared else find_last_conv(model)


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """The path of `layer` inside `model` (as `get_submodule` takes it), or its class name."""
    return next((name for name, m in model.named_modules() if m is layer), type(layer).__name__)


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
    signs: Tensor | None = None,
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
        layer: the layer to explain (see `cam_layer`); defaults to `find_last_conv(model)`.
        signs: +1 or -1 per image, multiplying its target logit: -1 explains the evidence
            against it (the negative class of a single-logit binary model). None: all +1.

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
            forward = model
            if signs is not None:
                factor = torch.as_tensor(signs, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
                if factor.shape[0] != logits.shape[0]:
                    raise BiomxError(f"got {factor.shape[0]} Grad-CAM signs for {logits.shape[0]} images")

                def forward(batch: Tensor) -> Tensor:
                    return model(batch) * factor

            cam = LayerGradCam(forward, layer).attribute(
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


# ---------------------------------------------------------------------------------- the report gallery


@dataclass(frozen=True)
class GalleryPlan:
    """Which test rows the gallery explains, which output each map explains, and why."""

    rows: list[int]  # positions in the test split, in display order
    outputs: Tensor  # (len(rows),) the output column each map explains
    signs: Tensor  # (len(rows),) +1, or -1 where the map explains the negated logit
    predicted: np.ndarray  # the task's predicted labels of those rows (for the captions)
    chosen: str  # how the rows were chosen and what each map explains, for the report text


def _single_labels(task: Any, preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, list] | None:
    """(index into the class views of each row's predicted class, the views), where each row
    predicts one class that has a view; None otherwise (regression, multilabel)."""
    views = task.class_views(preds, targets)
    predicted = np.asarray(task.attribution_target(preds)[0])
    classes = list(getattr(task, "classes", None) or [])
    if not views or predicted.ndim != 1 or not np.issubdtype(predicted.dtype, np.integer):
        return None
    names = [view[0] for view in views]
    if not classes or not all(0 <= k < len(classes) and classes[k] in names for k in predicted.tolist()):
        return None
    return np.array([names.index(classes[k]) for k in predicted.tolist()], dtype=np.int64), views


def _by_predicted_class(task: Any, preds: np.ndarray, targets: np.ndarray, n: int) -> GalleryPlan | None:
    """Each predicted class's most confident correct and most confident wrong predictions,
    alternating, classes taken in turn until n rows; every map explains the predicted class."""
    found = _single_labels(task, preds, targets)
    if found is None:
        return None
    view_of, views = found
    labelled = np.isfinite(np.asarray(targets, dtype=np.float64).reshape(len(preds), -1)).all(axis=1)
    queues, picked = [], []
    for j, (_, _, _, prob, is_class) in enumerate(views):
        prob, is_class = np.asarray(prob).reshape(-1), np.asarray(is_class).reshape(-1)
        mine = labelled & (view_of == j)
        ranked = [rows[np.argsort(-prob[rows], kind="stable")].tolist()
                  for rows in (np.flatnonzero(mine & is_class), np.flatnonzero(mine & ~is_class))]  # fmt: skip
        correct, wrong = ([(row, ok) for row in rows] for rows, ok in zip(ranked, (True, False), strict=True))
        queue = [pick for pair in zip(correct, wrong, strict=False) for pick in pair]
        queues.append(queue + correct[len(wrong):] + wrong[len(correct):])  # alternate, then the rest
        picked.append({True: [], False: []})
    taken = 0
    while taken < n and any(queues):
        for j, queue in enumerate(queues):
            if queue and taken < n:
                row, correct = queue.pop(0)
                picked[j][correct].append(row)
                taken += 1
    rows = [row for groups in picked for row in groups[True] + groups[False]]
    counts = "; ".join(f"predicted {views[j][0]}: {len(g[True])} correct, {len(g[False])} wrong"
                       for j, g in enumerate(picked) if g[True] or g[False])  # fmt: skip
    chosen_views = [views[view_of[row]] for row in rows]
    return GalleryPlan(
        rows,
        torch.tensor([int(view[1]) for view in chosen_views], dtype=torch.long),
        torch.tensor([float(view[2]) for view in chosen_views]),
        np.asarray(task.attribution_target(preds[rows])[0]) if rows else np.array([]),
        f"The {len(rows)} test images are the most confident correct and the most confident wrong "
        f"predictions of each predicted class, in turn ({counts}); each map explains the "
        "predicted class.",
    )


def plan_gallery(task: Any, preds: np.ndarray, targets: np.ndarray, n: int) -> GalleryPlan:
    """Up to n test rows to explain, through the task's explanation hooks only.

    A task whose rows each predict one class (binary, multiclass): `_by_predicted_class`, with
    each map explaining the predicted class (a single-logit binary model's negative class is its
    negated logit). Any other task (regression, multilabel) picks its rows and outputs itself
    (`pick_explained`) and says which (`attribution_text`).
    """
    if n <= 0 or len(preds) == 0:
        return GalleryPlan([], torch.zeros(0, dtype=torch.long), torch.zeros(0), np.array([]), "")
    plan = _by_predicted_class(task, preds, targets, n)
    if plan is not None:
        return plan
    picks = task.pick_explained(preds, targets, n)
    rows = [row for row, _, _ in picks]
    output, shown = task.attribution_text()
    return GalleryPlan(
        rows,
        torch.tensor([column for _, _, column in picks], dtype=torch.long),
        torch.ones(len(rows)),
        np.asarray(task.attribution_target(preds[rows])[0]),
        f"The {len(rows)} test images are {shown}; each map explains {output}.",
    )


def gallery_maps(model: nn.Module, data: Any, plan: GalleryPlan, declared: Sequence[str], chunk: int) -> tuple[Tensor, str]:
    """(Grad-CAM maps of the plan's rows on the CPU, the explained layer's path).

    Args:
        data: the test dataset (`__getitems__(rows) -> (inputs, targets)`).
        declared: the model's CAM layers (its zoo entry's `cam_layers`; () for none).
        chunk: inputs per Grad-CAM pass (3D activations are large: a few volumes at a time).
    """
    device = next(model.parameters()).device
    maps, layer = [], None
    for start in range(0, len(plan.rows), chunk):
        x, _ = data.__getitems__(plan.rows[start:start + chunk])
        x = x.to(device)
        layer = layer or cam_layer(model, x, declared)
        part = slice(start, start + chunk)
        maps.append(gradcam(model, x, plan.outputs[part].to(device), layer=layer,
                            signs=plan.signs[part].to(device)).cpu())  # fmt: skip
    return torch.cat(maps), module_name(model, layer)


def gallery_section(examples: list[dict], text: str = "") -> list[dict]:
    """The report section of explained images: each image beside its Grad-CAM overlay.

    Args:
        examples: dicts with `image` (C, H, W) in [0, 1], `heatmap` (H, W) in [0, 1] or None, and
            `caption`.
        text: how the images were chosen and what the maps explain (e.g. `GalleryPlan.chosen`),
            put before the overlay's legend.
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
    legend = "Each image beside its Grad-CAM overlay: red marks the regions that raised the explained output most."
    return [{"title": "Explanations", "text": f"{text} {legend}".strip(), "gallery": items}]
