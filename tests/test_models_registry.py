"""The zoo's declarations: which modalities and tasks each model serves, the one-line refusal of
a model that does not fit the config, the listing filters, and (un)registering a plug-in model."""

from __future__ import annotations

import pytest
from torch import nn

from biomx.errors import ConfigError
from biomx.models import registry
from biomx.models.registry import check_model_fits, get_entry, list_models, models_for

PIXEL_CLASSIFIERS = ["densenet121", "resnet18", "resnet34", "resnet50", "small_cnn"]
SEGMENTERS = ["segresnet", "swin_unetr", "unet"]
DETECTORS = ["retinanet"]
SEQUENCE_MODELS = ["basset", "danq", "deepsea", "protein_cnn", "protein_lstm", "sequence_transformer"]
MOLECULE_MODELS = ["attentive_fp", "dmpnn", "fingerprint_mlp", "gin", "lightgbm", "random_forest", "svm"]
TABULAR_MODELS = ["ft_transformer", "tabular_mlp"]
HISTORY_MODELS = ["history_gru", "history_transformer"]


def toy_mlp(in_channels: int = 30, out_dim: int = 1) -> nn.Module:
    return nn.Linear(in_channels, out_dim)


@pytest.fixture
def toy_model():
    """A plug-in model registered with the older positional form (one modality, no tasks)."""
    registry.register("toy_mlp", toy_mlp, "toyvec", "a linear layer (test plug-in)")
    yield get_entry("toy_mlp")
    registry.unregister("toy_mlp")


def test_every_model_declares_what_it_serves() -> None:
    assert registry.model_names() == sorted(PIXEL_CLASSIFIERS + SEGMENTERS + DETECTORS + SEQUENCE_MODELS
                                           + MOLECULE_MODELS + TABULAR_MODELS + HISTORY_MODELS)
    for name in PIXEL_CLASSIFIERS:  # built 2D or 3D from spatial_dims (volumes: 3)
        entry = get_entry(name)
        assert (entry.modalities, entry.tasks) == (("image", "volume"), ("classification", "regression"))
    for name in SEGMENTERS:
        assert (get_entry(name).modalities, get_entry(name).tasks) == (("image", "volume"), ("segmentation",))
    for name in SEQUENCE_MODELS:
        assert (get_entry(name).modalities, get_entry(name).tasks) == (("sequence",), ("classification", "regression"))
    for name in MOLECULE_MODELS:
        assert (get_entry(name).modalities, get_entry(name).tasks) == (("molecule",), ("classification", "regression"))
    for name in TABULAR_MODELS:
        assert get_entry(name).modalities == ("tabular",)
    for name in HISTORY_MODELS:
        assert (get_entry(name).modalities, get_entry(name).tasks) == (("history",), ("classification", "regression",
                                                                                      "survival"))


def test_check_model_fits_accepts_a_fitting_config() -> None:
    check_model_fits("resnet18", "volume", "classification")
    check_model_fits("unet", "image", "segmentation")
    check_model_fits("dmpnn", "molecule", "regression")
    check_model_fits("deepsea", "sequence", "classification")


def test_check_model_fits_refuses_in_one_line_listing_what_fits() -> None:
    with pytest.raises(ConfigError) as info:
        check_model_fits("deepsea", "volume", "classification")
    assert str(info.value) == ("model.name: deepsea serves sequence data, not volume; "
                               "models for volume classification: " + ", ".join(PIXEL_CLASSIFIERS))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        check_model_fits("unet", "volume", "regression")
    assert str(info.value) == ("model.name: unet serves segmentation, not regression; "
                               "models for volume regression: " + ", ".join(PIXEL_CLASSIFIERS))  # fmt: skip
    with pytest.raises(ConfigError) as info:
        check_model_fits("gin", "image", "segmentation")
    message = str(info.value)
    assert message.startswith("model.name: gin serves molecule data for classification and regression, "
                              "not image segmentation; models for image segmentation: segresnet, swin_unetr, unet")
    with pytest.raises(ConfigError, match="models for sequence segmentation: none$"):
        check_model_fits("unet", "sequence", "segmentation")
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19' \(did you mean 'resnet18'\?\)"):
        check_model_fits("resnet19", "image", "classification")
    for name, modality, task in [("deepsea", "volume", "classification"), ("swin_unetr", "molecule", "regression")]:
        with pytest.raises(ConfigError) as info:
            check_model_fits(name, modality, task)
        assert "\n" not in str(info.value) and str(info.value).startswith("model.name: ")


def test_list_models_filters_by_modality_and_task() -> None:
    assert [row["name"] for row in list_models(modality="molecule")] == MOLECULE_MODELS
    assert [row["name"] for row in list_models(task="segmentation")] == SEGMENTERS
    assert [row["name"] for row in list_models(modality="volume", task="regression")] == PIXEL_CLASSIFIERS
    assert list_models(modality="sequence", task="segmentation") == []
    assert models_for("image") == sorted(PIXEL_CLASSIFIERS + SEGMENTERS + DETECTORS)
    assert models_for("volume", "detection") == DETECTORS
    rows = list_models(in_channels=3, out_dim=2, modality="image", task="segmentation")
    assert rows[0]["modalities"] == ("image", "volume") and rows[0]["tasks"] == ("segmentation",)
    # the in_channels given reaches the pixel models only (sequence models keep their own size)
    assert rows[0]["parameters"] > list_models(in_channels=1, task="segmentation")[0]["parameters"]
    assert [row["parameters"] for row in list_models(in_channels=5, modality="sequence")] == [
        row["parameters"] for row in list_models(in_channels=1, modality="sequence")]


def test_a_plugin_model_registers_the_old_way_and_unregisters(toy_model) -> None:
    assert (toy_model.modalities, toy_model.tasks) == (("toyvec",), ())  # no tasks declared: any task
    check_model_fits("toy_mlp", "toyvec", "toyclf")
    assert models_for("toyvec", "anything") == ["toy_mlp"]
    assert [row["name"] for row in list_models(modality="toyvec")] == ["toy_mlp"]
    with pytest.raises(ConfigError, match="toy_mlp serves toyvec data, not image; models for image"):
        check_model_fits("toy_mlp", "image", "classification")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("toy_mlp", toy_mlp, "toyvec", "again")
    registry.unregister("toy_mlp")
    assert "toy_mlp" not in registry.model_names()
    registry.unregister("toy_mlp")  # absent: nothing to do
    registry.register("toy_mlp", toy_mlp, description="serves everything")  # the fixture removes it
    assert models_for("volume", "segmentation") == ["segresnet", "swin_unetr", "toy_mlp", "unet"]
    check_model_fits("toy_mlp", "sequence", "segmentation")


def test_declared_with_keywords() -> None:
    registry.register("toy_seg", toy_mlp, description="toy", modalities=["image"], tasks=["segmentation"])
    try:
        assert (get_entry("toy_seg").modalities, get_entry("toy_seg").tasks) == (("image",), ("segmentation",))
        assert "toy_seg" in models_for("image", "segmentation") and "toy_seg" not in models_for("volume")
    finally:
        registry.unregister("toy_seg")
