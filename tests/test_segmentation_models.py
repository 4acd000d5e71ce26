"""Tests for biomx.models.segmentation: UNet, SegResNet, SwinUNETR in 2D and 3D."""

from __future__ import annotations

import pytest
import torch

from biomx.errors import ConfigError
from biomx.models.registry import build_model, check_model_args, get_entry, list_models
from biomx.models.segmentation import required_divisor

# Small convolutions: extra intra-op threads only add synchronisation on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")



# Small variants keep CPU tests fast; the defaults are built (and one is run) below.
SMALL = {
    "unet": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4},
}
CASES = [
    pytest.param("unet", 2, (24, 16), id="unet-2d"),
    pytest.param("unet", 3, (12, 8, 16), id="unet-3d"),
    pytest.param("segresnet", 2, (16, 24), id="segresnet-2d"),
    pytest.param("segresnet", 3, (8, 12, 16), id="segresnet-3d"),
    pytest.param("swin_unetr", 2, (32, 64), id="swin_unetr-2d"),
    pytest.param("swin_unetr", 3, (32, 32, 64), id="swin_unetr-3d"),
]


@pytest.mark.parametrize(("name", "dims", "size"), CASES)
def test_logits_match_input_size_and_train(name: str, dims: int, size: tuple[int, ...]) -> None:
    """(N, C, *S) -> (N, K, *S) logits, every parameter gets a gradient, and a step lowers the loss."""
    model = build_model(name, in_channels=2, out_dim=3, spatial_dims=dims, **SMALL[name])
    for s in size:
        assert s % required_divisor(name, SMALL[name]) == 0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, *size, generator=gen)
    target = torch.randint(0, 3, (2, *size), generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        logits = model(x)
        assert logits.shape == (2, 3, *size)
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            for pname, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["unet", "segresnet"])
def test_defaults_run_in_2d(name: str) -> None:
    model = build_model(name, in_channels=1, out_dim=2, spatial_dims=2).eval()
    size = 2 * required_divisor(name, {})
    with torch.no_grad():
        assert model(torch.randn(1, 1, size, size)).shape == (1, 2, size, size)


def test_registry_builds_with_task_sizes() -> None:
    model = build_model("unet", in_channels=2, out_dim=3, spatial_dims=2)
    assert model(torch.randn(1, 2, 32, 32)).shape == (1, 3, 32, 32)
    assert get_entry("swin_unetr").modalities == ("image", "volume")  # 2D or 3D by spatial_dims
    assert get_entry("swin_unetr").tasks == ("segmentation",)


def test_yaml_lists_become_tuples() -> None:
    model = build_model("unet", channels=[4, 8], strides=[2], spatial_dims=2)
    assert model.channels == (4, 8) and model.strides == (2,)


def test_required_divisor() -> None:
    assert required_divisor("unet", {}) == 16
    assert required_divisor("unet", {"channels": [8, 16, 32], "strides": [2, 3]}) == 6
    assert required_divisor("segresnet", {}) == 8
    assert required_divisor("segresnet", {"blocks_down": [1, 2]}) == 2
    assert required_divisor("swin_unetr", {"feature_size": 48}) == 32
    assert required_divisor("resnet18", {}) == 1


def test_required_divisor_is_the_real_constraint() -> None:
    """A size off the divisor breaks the model; the divisor itself works."""
    args = {"channels": [4, 8, 16], "strides": [2, 3]}
    model = build_model("unet", spatial_dims=2, **args)
    div = required_divisor("unet", args)
    assert model(torch.randn(1, 1, div, 2 * div)).shape[2:] == (div, 2 * div)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 1, div + 2, div))


@pytest.mark.parametrize(
    ("name", "args", "key"),
    [
        ("unet", {"strides": [2, 2]}, "model.args.strides"),  # one fewer than channels (5)
        ("unet", {"channels": "16,32"}, "model.args.channels"),
        ("unet", {"channels": [16, 0, 32]}, "model.args.channels"),
        ("unet", {"norm": "layer"}, "model.args.norm"),
        ("unet", {"dropout": 1.5}, "model.args.dropout"),
        ("unet", {"spatial_dims": 4}, "model.args.spatial_dims"),
        ("segresnet", {"init_filters": 12}, "model.args.init_filters"),
        ("segresnet", {"blocks_up": [1, 1]}, "model.args.blocks_up"),
        ("segresnet", {"blocks_down": [1]}, "model.args.blocks_down"),
        ("swin_unetr", {"feature_size": 16}, "model.args.feature_size"),
        ("swin_unetr", {"depths": [2, 2, 2]}, "model.args.depths"),
        ("swin_unetr", {"num_heads": [5, 6, 12, 24]}, "model.args.num_heads"),
        ("unet", {"chanels": [8, 16]}, "model.args.chanels"),  # typo: caught by the registry
    ],
)
def test_bad_args_name_the_key(name: str, args: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        build_model(name, **args)
    assert "\n" not in str(info.value)


def test_builders_take_the_common_arguments_first() -> None:
    for name in ("unet", "segresnet", "swin_unetr"):
        check_model_args(name, {"in_channels": 1, "out_dim": 2, "spatial_dims": 3})


def test_list_models_includes_segmentation() -> None:
    rows = {row["name"]: row for row in list_models(in_channels=2, out_dim=3)}
    for name in ("unet", "segresnet", "swin_unetr"):
        assert rows[name]["tasks"] == ("segmentation",)
    # in_channels is passed through: the first conv has 2 input channels.
    expected = sum(p.numel() for p in build_model("unet", in_channels=2, out_dim=3).parameters())
    assert rows["unet"]["parameters"] == expected
    assert rows["unet"]["parameters"] != sum(p.numel() for p in build_model("unet").parameters())
