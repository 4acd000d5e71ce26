"""Grad-CAM of the zoo's image models at their declared layers (the outputs of their last blocks),
on a trained ResNet-18 and on every zoo classifier; the report gallery explains each image's
predicted class and says how its images were chosen; absurd model arguments are one line.

A user trial found every map of a trained ResNet-18 blank: the last convolution sits before the
batch norm and the residual add of the last block, and its Grad-CAM was all zero for 15 of 16
confident pneumonia cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from biomx.config import validate
from biomx.datasets import get_dataset
from biomx.errors import BiomxError
from biomx.experiment import prepare, train
from biomx.modalities.common.gradcam import cam_layer, gradcam, module_name, plan_gallery
from biomx.models.registry import build_model, check_model_args, get_entry, models_for
from biomx.runs import load_run_model
from biomx.tasks import task_from_info

PIXEL_CLASSIFIERS = models_for("image", "classification")


def _top_quarter_mass(maps: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass in its brightest quarter of pixels (0.25 for a uniform map)."""
    flat = maps.flatten(1)
    top = flat.sort(dim=1, descending=True).values[:, : flat.shape[1] // 4]
    return top.sum(1) / flat.sum(1).clamp_min(1e-12)


@pytest.fixture(scope="module")
def pneumonia_npz(tmp_path_factory) -> Path:
    """500 training and 200 held-out PneumoniaMNIST chest X-rays (28 px), as an npz."""
    with np.load(get_dataset("pneumoniamnist").path) as a:
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:n] for s, n in (("train", 500), ("val", 200))
                  for k in ("images", "labels")}  # fmt: skip
    path = tmp_path_factory.mktemp("pneumonia") / "pneumonia.npz"
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="module")
def resnet_run(pneumonia_npz, tmp_path_factory):
    """A real 2-epoch ResNet-18 run (64 px, the example's stride-2 stem) and its prepared data:
    about 60 training steps, the slow part of this file."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    raw = {
        "name": "cam",
        "data": {"source": "npz", "path": str(pneumonia_npz), "image": {"size": [64, 64]},
                 "split": {"method": "predefined", "holdout": "val"}},
        "model": {"name": "resnet18", "args": {"stem": "imagenet"}},
        "task": {"type": "binary"},
        # small batches: enough steps in 2 epochs for the batch-norm statistics to settle
        "train": {"epochs": 2, "batch_size": 16, "progress": False, "device": "cpu", "seed": 0,
                  "optimizer": {"name": "adamw", "lr": 0.001}},
        "eval": {"bootstrap": 0, "explain": 8},
        "output": {"dir": str(tmp_path_factory.mktemp("runs")), "name": "run", "tensorboard": False},
    }  # fmt: skip
    cfg = validate(raw)
    try:
        run_dir = train(cfg)
        prepared = prepare(cfg)
    finally:
        torch.set_num_threads(threads)
    return run_dir, prepared


@pytest.fixture(scope="module")
def trained_maps(resnet_run):
    """The trained model, the test inputs, P(pneumonia) and the explained layer."""
    run_dir, prepared = resnet_run
    model, _ = load_run_model(run_dir)
    test = prepared.datasets["test"]
    x, _ = test.__getitems__(list(range(len(test))))
    with torch.no_grad():
        prob = torch.sigmoid(model.eval()(x)[:, 0])
    layer = cam_layer(model, x[:1], get_entry("resnet18").cam_layers)
    return model, x, prob, layer


@pytest.mark.slow
def test_confident_positive_maps_of_a_trained_resnet_are_not_blank(trained_maps):
    """layer4 (2x2 at 64 px) is the class-activation map: positive wherever the logit's evidence
    is. Its last convolution gave all-zero maps for every confident positive of this model."""
    model, x, prob, layer = trained_maps
    assert module_name(model, layer) == "layer4"
    confident = prob >= 0.9
    assert confident.sum() >= 5, f"the 2-epoch model predicts too few confident positives: {prob}"
    maps = gradcam(model, x[confident], 0, layer=layer)
    assert (maps.flatten(1).amax(1) > 0).all()  # no all-zero map
    share = _top_quarter_mass(maps)
    assert (share > 0.255).all() and share.mean() > 0.27  # concentrated: uniform would be 0.25


@pytest.mark.slow
def test_confident_negative_maps_explain_the_negative_class(trained_maps):
    """A single-logit model's negative class is explained by the negated logit: not blank."""
    model, x, prob, layer = trained_maps
    confident = prob <= 0.1
    if not confident.any():
        pytest.skip("no confident negative prediction after 2 epochs")
    signs = -torch.ones(int(confident.sum()))
    maps = gradcam(model, x[confident], 0, layer=layer, signs=signs)
    assert (maps.flatten(1).amax(1) > 0).all()


@pytest.mark.slow
def test_report_gallery_explains_predicted_classes_and_says_how_it_chose(resnet_run):
    run_dir, _ = resnet_run
    html = (run_dir / "report.html").read_text()
    assert "most confident correct and the most confident wrong predictions of each predicted class" in html
    assert "each map explains the predicted class" in html and "Grad-CAM of the output of layer" in html
    assert html.count("Grad-CAM overlay") >= 8


@pytest.mark.parametrize("name", PIXEL_CLASSIFIERS)
def test_declared_cam_layers_exist_and_the_deepest_gives_a_map(name):
    """At 128 px every declared layer keeps a map, so the deepest is explained. Its map is the
    class-activation map (global pooling then a linear head): for a random net, either the logit
    or its negation has positive evidence somewhere, so one of the two maps is not blank."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    declared = get_entry(name).cam_layers
    model = build_model(name, in_channels=1, out_dim=1, spatial_dims=2)
    for path in declared:
        model.get_submodule(path)  # AttributeError if the declaration is stale
    x = torch.randn(2, 1, 128, 128)
    layer = cam_layer(model, x, declared)
    assert layer is model.get_submodule(declared[0])
    plus = gradcam(model, x, 0, layer=layer).flatten(1)
    minus = gradcam(model, x, 0, layer=layer, signs=torch.tensor([-1.0, -1.0])).flatten(1)
    assert (torch.maximum(plus.amax(1), minus.amax(1)) > 0).all()
    best = torch.where((plus.amax(1) > 0)[:, None], plus, minus)
    assert (best.std(1) > 0).all()  # localised, not constant


def test_a_coarse_last_block_falls_back_to_an_earlier_declared_one():
    """ResNet-18's stride-2 stem leaves 1^3 at layer4 for a 28^3 volume: layer2 keeps 4^3."""
    model = build_model("resnet18", in_channels=1, out_dim=1, spatial_dims=3)
    layer = cam_layer(model, torch.randn(1, 1, 28, 28, 28), get_entry("resnet18").cam_layers)
    assert module_name(model, layer) == "layer2"


def test_an_undeclared_layer_path_is_one_line():
    model = build_model("small_cnn", in_channels=1, out_dim=1)
    with pytest.raises(BiomxError, match="Grad-CAM layer 'layer9' is not a module of the model") as info:
        cam_layer(model, torch.randn(1, 1, 28, 28), ("layer9",))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("name", "args", "says"), [
    ("small_cnn", {"width": 10**9}, "model.args.width: small_cnn takes an integer from 1 to 1024; got 1000000000"),
    ("small_cnn", {"depth": 200}, "model.args.depth: small_cnn takes an integer from 1 to 8; got 200"),
    ("small_cnn", {"width": -5}, "model.args.width: small_cnn takes an integer from 1 to 1024; got -5"),
    ("small_cnn", {"width": 1024, "depth": 8}, "model.args.depth: small_cnn's last stage would have width * 2**(depth - 1) = 131072 channels"),
    ("small_cnn", {"dropout": 1.5}, "model.args.dropout: small_cnn takes a number from 0.0 to 1.0; got 1.5"),
    ("unet", {"channels": [16, -32]}, "model.args.channels: unet takes a list of integers, each from 1 to 4096; got [16, -32]"),
    ("deepsea", {"length": 10**8}, "model.args.length: deepsea takes an integer from 16 to 10000; got 100000000"),
    ("resnet18", {"in_channels": 0}, "model.args.in_channels: resnet18 takes an integer from 1 to 4096; got 0"),
    ("fingerprint_mlp", {"hidden_sizes": [2**40]}, "model.args.hidden_sizes: fingerprint_mlp takes a list of integers, each from 1 to 65536"),
])  # fmt: skip
def test_absurd_model_args_are_one_line_naming_the_argument(name, args, says):
    """One argument out of range is refused by the config check, before any data is read; a
    combination (small_cnn's last-stage width) by the builder, before any layer is allocated."""
    checks = [lambda: build_model(name, **args)]
    if len(args) == 1:
        checks.append(lambda: check_model_args(name, args))
    for check in checks:
        with pytest.raises(BiomxError) as info:
            check()
        assert str(info.value).startswith(says) and "\n" not in str(info.value)


def test_gallery_explains_each_predicted_class_and_says_how_it_chose():
    """Binary: predicted-negative images explain the negated logit (sign -1), not the positive one."""
    binary = task_from_info({"name": "classification", "kind": "binary", "classes": ["normal", "pneumonia"],
                             "threshold": 0.5})  # fmt: skip
    probs = np.array([0.99, 0.95, 0.9, 0.8, 0.2, 0.05, 0.01, 0.6, 0.3])[:, None]
    truth = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0], dtype=np.float64)
    plan = plan_gallery(binary, probs, truth, 6)
    assert plan.rows == [0, 1, 2, 5, 4, 6]  # per predicted class: correct by confidence, then wrong
    assert plan.signs.tolist() == [1, 1, 1, -1, -1, -1] and plan.outputs.tolist() == [0] * 6
    assert plan.predicted.tolist() == [1, 1, 1, 0, 0, 0]
    assert plan.chosen == (
        "The 6 test images are the most confident correct and the most confident wrong predictions of "
        "each predicted class, in turn (predicted pneumonia: 2 correct, 1 wrong; predicted normal: "
        "2 correct, 1 wrong); each map explains the predicted class.")  # fmt: skip
    multiclass = task_from_info({"name": "classification", "kind": "multiclass", "classes": ["a", "b", "c"],
                                 "threshold": 0.5})  # fmt: skip
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    plan = plan_gallery(multiclass, probs, np.array([0, 2, 2, 1, 1.0]), 4)
    assert plan.rows == [0, 3, 4, 2] and plan.outputs.tolist() == [0, 0, 1, 2] and (plan.signs == 1).all()
    regression = task_from_info({"name": "regression", "kind": "regression", "targets": ["y"], "loss": "mse",
                                 "mean": [0.0], "std": [1.0]})  # fmt: skip
    plan = plan_gallery(regression, np.array([[0.1], [2.0], [1.0]]), np.array([[0.0], [1.0], [1.0]]), 2)
    assert plan.rows == [2, 1] and plan.chosen.startswith("The 2 test images are the best and the worst")
