"""Grad-CAM: shapes, ranges, state hygiene, and that the maps point at the evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121
from torch import nn

from biomx.datasets import get_dataset
from biomx.errors import BiomxError
from biomx.modalities.common.gradcam import find_last_conv, gradcam, overlay


def small_cnn(num_outputs: int = 1) -> nn.Sequential:
    """Two convs then global max pooling: max pooling lets a small local feature decide."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_outputs),
    )


def test_find_last_conv_picks_the_last_convolution():
    model = small_cnn()
    assert find_last_conv(model) is model[3]
    densenet = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)
    convs = [m for m in densenet.modules() if isinstance(m, nn.Conv2d)]
    assert find_last_conv(densenet) is convs[-1]
    conv3d = nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv3d(2, 2, 3), nn.Flatten())
    assert find_last_conv(conv3d) is conv3d[1]


def test_find_last_conv_rejects_a_model_without_convolutions():
    with pytest.raises(BiomxError, match="no convolution layer"):
        find_last_conv(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_gradcam_on_densenet_binary_gives_normalised_maps_at_input_size():
    torch.manual_seed(0)
    model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1)
    images = torch.rand(2, 1, 64, 64)
    maps = gradcam(model, images)
    # A random net may have no positive evidence at all (an all-zero map is then correct);
    # flipping the output weights flips every gradient, so one of the two has some.
    with torch.no_grad():
        model.class_layers.out.weight.neg_()
    flipped = gradcam(model, images)
    for m in (maps, flipped):
        assert m.shape == (2, 64, 64)
        assert not m.requires_grad
        assert torch.isfinite(m).all()
        assert m.min() >= 0.0
        assert set(m.amax(dim=(1, 2)).tolist()) <= {0.0, 1.0}
    assert ((maps.amax(dim=(1, 2)) == 1.0) | (flipped.amax(dim=(1, 2)) == 1.0)).all()


def test_gradcam_targets_change_the_map_for_multiclass():
    torch.manual_seed(0)
    model = small_cnn(num_outputs=3)
    images = torch.rand(4, 1, 28, 28)
    predicted = model(images).argmax(dim=1)
    by_default = gradcam(model, images)
    assert torch.allclose(by_default, gradcam(model, images, predicted))
    per_class = [gradcam(model, images, k) for k in range(3)]
    # A random net still weights its channels differently per class.
    assert not torch.allclose(per_class[0], per_class[1])
    as_tensor = gradcam(model, images, torch.tensor([2, 2, 2, 2]))
    assert torch.allclose(as_tensor, per_class[2])


@pytest.mark.parametrize(
    ("num_outputs", "targets", "message"),
    [
        (3, 3, "out of range"),
        (3, torch.tensor([0, 1]), "2 Grad-CAM targets for 4 images"),
        (1, 1, "single-logit"),
    ],
)
def test_gradcam_rejects_bad_targets(num_outputs, targets, message):
    model = small_cnn(num_outputs)
    with pytest.raises(BiomxError, match=message):
        gradcam(model, torch.rand(4, 1, 28, 28), targets)


def test_gradcam_rejects_non_image_batches():
    with pytest.raises(BiomxError, match=r"\(B, C, H, W\)"):
        gradcam(small_cnn(), torch.rand(1, 28, 28))


def test_gradcam_restores_model_state_and_works_under_no_grad():
    model = small_cnn()
    model.train()
    model[0].eval()  # a frozen part inside a training model must stay in eval mode
    model[0].weight.requires_grad_(False)
    images = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        maps = gradcam(model, images)
    assert maps.shape == (2, 28, 28)
    assert model.training and model[3].training
    assert not model[0].training
    assert not model[0].weight.requires_grad
    assert model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not images.requires_grad


def test_gradcam_all_zero_activation_gives_zero_map_not_nan():
    model = small_cnn()
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.zero_()
    maps = gradcam(model, torch.rand(2, 1, 28, 28))
    assert torch.equal(maps, torch.zeros(2, 28, 28))


def _boxes_overlap(a: tuple, a_size: tuple, b: tuple, b_size: tuple, margin: int) -> bool:
    return not (
        a[0] + a_size[0] + margin <= b[0]
        or b[0] + b_size[0] + margin <= a[0]
        or a[1] + a_size[1] + margin <= b[1]
        or b[1] + b_size[1] + margin <= a[1]
    )


def _square_task(images: np.ndarray, rng: np.random.Generator):
    """Real X-rays; the first half gets a bright 6x6 square (label 1).

    Every image also gets an equally bright 2x12 bar elsewhere, so "the brightest spot"
    is not a shortcut: only a map that follows the model's evidence finds the square.
    """
    x = images.astype(np.float32) / 255.0
    n = len(x)
    labels = (np.arange(n) < n // 2).astype(np.float32)
    squares = np.zeros((n, 2), dtype=int)
    for i in range(n):
        square = tuple(rng.integers(0, 28 - 6 + 1, size=2))
        bar = square
        while _boxes_overlap(square, (6, 6), bar, (2, 12), margin=2):
            bar = (rng.integers(0, 28 - 2 + 1), rng.integers(0, 28 - 12 + 1))
        x[i, bar[0] : bar[0] + 2, bar[1] : bar[1] + 12] = 1.0
        if labels[i]:
            x[i, square[0] : square[0] + 6, square[1] : square[1] + 6] = 1.0
            squares[i] = square
    return torch.from_numpy(x[:, None]), torch.from_numpy(labels), squares


def _peak_hit_rate(maps: np.ndarray, squares: np.ndarray, tolerance: int = 2) -> float:
    """Fraction of maps whose argmax lies in its square grown by `tolerance` pixels."""
    hits = 0
    for heat, (top, left) in zip(maps, squares, strict=True):
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        hits += (top - tolerance <= row <= top + 5 + tolerance) and (
            left - tolerance <= col <= left + 5 + tolerance
        )
    return hits / len(maps)


def test_gradcam_peaks_on_the_evidence_in_real_xrays():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with np.load(get_dataset("pneumoniamnist").path) as data:
        train_images, test_images = data["train_images"][:256], data["val_images"][:128]
    x_train, y_train, _ = _square_task(train_images, rng)
    x_test, y_test, squares = _square_task(test_images, rng)

    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        idx = torch.randint(0, len(x_train), (64,))
        logits = model(x_train[idx]).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = ((model(x_test).squeeze(1) > 0).float() == y_test).float().mean().item()
    assert accuracy >= 0.95

    positives = y_test == 1
    maps = gradcam(model, x_test[positives]).numpy()
    # The task's own control: raw brightness cannot find the square reliably.
    assert _peak_hit_rate(x_test[positives, 0].numpy(), squares[positives.numpy()]) <= 0.7
    assert _peak_hit_rate(maps, squares[positives.numpy()]) >= 0.8


def test_overlay_blends_jet_colour_over_the_image():
    image = np.full((1, 8, 8), 0.5, dtype=np.float32)
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[0, 0] = 1.0
    plain = overlay(image, heat, alpha=0.0)
    assert plain.shape == (8, 8, 3) and plain.dtype == np.uint8
    assert (plain == 128).all()
    blended = overlay(image, heat)
    # jet(1.0) is dark red, jet(0.0) dark blue.
    assert blended[0, 0, 0] > blended[0, 0, 2]
    assert blended[1, 1, 2] > blended[1, 1, 0]
    rgb = overlay(np.random.rand(3, 8, 8), heat)
    assert rgb.shape == (8, 8, 3)


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(BiomxError, match="does not match"):
        overlay(np.zeros((1, 8, 8)), np.zeros((4, 4)))
