"""One explicit registry of buildable models.

Configs name a model; only names registered here can be built (no dotted-path imports,
no code from a config). Arguments are checked against the builder's signature before
anything is built, so a typo names the bad key and the closest valid one, and against the ranges
the builder's signature declares (`biomx.models.bounds`), so width: 10**9 is one line, not an
out-of-memory crash.

Each model declares the modalities (`data.modality`) and tasks (`task.kind`) it serves, as
plain names; `check_model_fits` refuses a config that pairs it with anything else, in one line
that lists the models that do fit. An entry that declares nothing serves every modality / task.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from biomx.errors import ConfigError
from biomx.models import (
    detection,
    history,
    image2d,
    molecule,
    segmentation,
    sequence,
    solvers,
    tabular,
    trees,
)
from biomx.models.bounds import check_bounds
from biomx.models.norms import batchnorm_to_groupnorm
from biomx.models.stack import Stack

STACK = "stack"  # run.json's model name for a stack of zoo models


def builder_defaults(in_channels: int) -> dict[str, int]:
    """Count parameters with the builder's own input size (e.g. 4 or 20 one-hot channels)."""
    return {}


def given_in_channels(in_channels: int) -> dict[str, int]:
    """Count parameters with the `--in-channels` of `biomx models` (pixels and voxels)."""
    return {"in_channels": in_channels}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    modalities: tuple[str, ...] = ()  # the data.modality values it serves; () = every one
    tasks: tuple[str, ...] = ()  # the task.kind values it serves; () = every one
    # the input sizes `biomx models` builds it with to count parameters, from --in-channels
    listing_inputs: Callable[[int], dict[str, int]] = builder_defaults
    # Where explanations read the network (class-activation maps): the outputs of its last
    # blocks as module paths for `model.get_submodule`, deepest first; an earlier one is used
    # when an input leaves the deepest without a spatial map. () = the last convolution.
    cam_layers: tuple[str, ...] = ()

    def serves(self, modality: str | None = None, task: str | None = None) -> bool:
        """Whether the model fits `modality` data and a `task` task (None: any)."""
        fits_modality = modality is None or not self.modalities or modality in self.modalities
        return fits_modality and (task is None or not self.tasks or task in self.tasks)


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    builder: Callable[..., nn.Module],
    modality: str | None = None,
    description: str = "",
    *,
    modalities: Iterable[str] = (),
    tasks: Iterable[str] = (),
    listing_inputs: Callable[[int], dict[str, int]] = builder_defaults,
    cam_layers: Iterable[str] = (),
) -> None:
    """Add a model builder to the zoo under `name` (e.g. from a plug-in module).

    Args:
        modality: one modality it serves (the older form; `modalities` for several).
        modalities: the `data.modality` names it serves; none given = every modality.
        tasks: the `task.kind` names it serves; none given = every task.
        listing_inputs: maps `biomx models --in-channels` to the input arguments the listing
            builds it with (default: the builder's own defaults).
        cam_layers: module paths of the outputs of its last blocks, deepest first (e.g.
            ("layer4", "layer3") for a ResNet), for class-activation maps; none given = the last
            convolution, which in a network with residual adds or a final norm can miss the
            evidence (all-zero maps).
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    served = tuple(modalities) or ((modality,) if modality else ())
    _REGISTRY[name] = ModelEntry(name, builder, description, served, tuple(tasks), listing_inputs,
                                 tuple(cam_layers))  # fmt: skip


def unregister(name: str) -> None:
    """Remove model `name` from the zoo (e.g. a test's toy model); no error if it is absent."""
    _REGISTRY.pop(name, None)


def _molecule_inputs(name: str) -> Callable[[int], dict[str, int]]:
    return lambda in_channels: molecule.listing_inputs(name)


# What each model serves, as the registries' plain names (data declared here, never branched on).
PIXELS = ("image", "volume")  # these builders make 2D or 3D networks from `spatial_dims`
PREDICTS = ("classification", "regression")


def _register_zoo() -> None:
    for name, builder, description, cam_layers in [
        ("small_cnn", image2d.small_cnn, "VGG-style CNN, fast on CPU (the demo model)", image2d.SMALL_CNN_CAM),
        ("resnet18", image2d.resnet18, "ResNet-18 (MONAI)", image2d.RESNET_CAM),
        ("resnet34", image2d.resnet34, "ResNet-34 (MONAI)", image2d.RESNET_CAM),
        ("resnet50", image2d.resnet50, "ResNet-50, bottleneck blocks (MONAI)", image2d.RESNET_CAM),
        ("densenet121", image2d.densenet121, "DenseNet-121 (MONAI), CheXNet backbone", image2d.DENSENET_CAM),
    ]:
        register(name, builder, description=description, modalities=PIXELS, tasks=PREDICTS,
                 listing_inputs=given_in_channels, cam_layers=cam_layers)  # fmt: skip
    for name, builder, description in [
        ("deepsea", sequence.deepsea, "DeepSEA, 3-layer DNA CNN (Zhou 2015)"),
        ("basset", sequence.basset, "Basset, DNA CNN with batch norm (Kelley 2016)"),
        ("danq", sequence.danq, "DanQ, DNA CNN + BiLSTM (Quang & Xie 2016)"),
        ("sequence_transformer", sequence.sequence_transformer,
         "Small transformer encoder over patches, padding-masked"),
        ("protein_cnn", sequence.protein_cnn, "Multi-kernel protein CNN, max pool"),
        ("protein_lstm", sequence.protein_lstm, "Protein BiLSTM, mean + max pool"),
    ]:  # fmt: skip
        register(name, builder, description=description, modalities=("sequence",), tasks=PREDICTS)
    for name, builder, description in [
        ("dmpnn", molecule.dmpnn, "Directed message passing network (chemprop, Yang 2019)"),
        ("gin", molecule.gin, "GIN with bond features (Xu 2019; GINE, Hu 2020)"),
        ("attentive_fp", molecule.attentive_fp, "AttentiveFP graph attention (Xiong 2020)"),
        ("fingerprint_mlp", molecule.fingerprint_mlp, "MLP on Morgan fingerprints / RDKit descriptors (no graph)"),
        ("svm", solvers.svm, "SVM on a MinMax / Tanimoto fingerprint kernel, C by cross-validation (fitted)"),
        ("random_forest", trees.random_forest, "random forest on fingerprints / descriptors (fitted, scikit-learn)"),
        ("lightgbm", trees.lightgbm, "gradient-boosted trees on fingerprints / descriptors (fitted, LightGBM)"),
    ]:
        register(name, builder, description=description, modalities=("molecule",), tasks=PREDICTS,
                 listing_inputs=_molecule_inputs(name))  # fmt: skip
    for name, builder, description in [
        ("unet", segmentation.unet, "Residual UNet (MONAI), 2D/3D segmentation baseline"),
        ("segresnet", segmentation.segresnet, "SegResNet (MONAI, Myronenko 2018), 2D/3D"),
        ("swin_unetr", segmentation.swin_unetr,
         "SwinUNETR (MONAI, Hatamizadeh 2022): Swin encoder + CNN decoder, 2D/3D"),
    ]:  # fmt: skip
        register(name, builder, description=description, modalities=PIXELS, tasks=("segmentation",),
                 listing_inputs=given_in_channels)  # fmt: skip
    register("retinanet", detection.retinanet, description="RetinaNet (MONAI), ResNet-FPN backbone, 2D/3D boxes",
             modalities=PIXELS, tasks=("detection",), listing_inputs=given_in_channels)  # fmt: skip
    for name, builder, description in [
        ("tabular_mlp", tabular.tabular_mlp, "MLP with categorical embeddings, batch/layer norm (tables)"),
        ("ft_transformer", tabular.ft_transformer, "FT-Transformer: feature tokens + CLS (Gorishniy 2021)"),
    ]:
        register(name, builder, description=description, modalities=("tabular",),
                 tasks=(*PREDICTS, "survival"), listing_inputs=tabular.listing_inputs)  # fmt: skip
    for name, builder, description in [
        ("history_gru", history.history_gru, "GRU/LSTM over visits (packed) + static covariates (histories)"),
        ("history_transformer", history.history_transformer, "transformer over visits (time encoding) + covariates"),
    ]:
        register(name, builder, description=description, modalities=("history",),
                 tasks=(*PREDICTS, "survival"), listing_inputs=history.listing_inputs)  # fmt: skip


_register_zoo()


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def suggest(name: str, options: list[str]) -> str:
    """' (did you mean X?)' for the closest option, or ''."""
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ConfigError(
            f"model.name: unknown model {name!r}{suggest(name, model_names())}; "
            f"run `biomx models` to list them"
        )
    return _REGISTRY[name]


def check_model_args(name: str, args: dict[str, Any]) -> None:
    """Raise ConfigError (one line) if `args` has a key the builder does not take, or a value
    outside the range its signature declares (`biomx.models.bounds`), before anything is built."""
    builder = get_entry(name).builder
    params = inspect.signature(builder).parameters
    for key in args:
        if key not in params:
            raise ConfigError(
                f"model.args.{key}: {name} has no argument {key!r}{suggest(key, list(params))}; "
                f"allowed: {', '.join(params)}"
            )
    check_bounds(name, builder, args)


def accepted_inputs(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """The data-derived inputs (from a modality's `build_datasets`) that model `name`'s builder
    takes: a modality states every input size it knows, each model reads what it needs."""
    params = inspect.signature(get_entry(name).builder).parameters
    return {key: value for key, value in inputs.items() if key in params}


def build_model(name: str, **args: Any) -> nn.Module:
    """Build a zoo model by name.

    Args:
        name: a registered name (see `model_names()` or `biomx models`).
        **args: builder arguments, e.g. `in_channels=1, out_dim=2`.

    Returns:
        An initialised `torch.nn.Module`.

    Raises:
        ConfigError: unknown name or argument, or an invalid argument value.

    Example:
        >>> model = build_model("resnet18", in_channels=1, out_dim=1)
    """
    if name == STACK:  # what model.name: auto assembles (biomx.selection), not a family a config names
        return Stack([build_model(m["name"], **m["args"]) for m in args["members"]], int(args["out_dim"]))
    check_model_args(name, args)
    try:
        return get_entry(name).builder(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.args: cannot build {name} with {args}: {err}") from None


def build_recorded(model: dict[str, Any]) -> nn.Module:
    """A run's model from its run.json entry (`{"name", "args"}`), with the conversion the run
    recorded applied again (`"batchnorm": "group"`: a DP run's BatchNorm became GroupNorm before
    training), so its weights load wherever the run is rebuilt."""
    built = build_model(model["name"], **model["args"])
    if model.get("batchnorm") == "group":
        batchnorm_to_groupnorm(built)
    return built


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _and(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def models_for(modality: str | None = None, task: str | None = None) -> list[str]:
    """The registered models that serve `modality` data and a `task` task (None: any), sorted."""
    return [name for name in model_names() if _REGISTRY[name].serves(modality, task)]


def check_model_fits(name: str, modality: str, task: str) -> None:
    """Raise ConfigError (one line) unless model `name` serves `modality` data and `task`.

    The message names `model.name`, what the model serves and the models that would fit, e.g.
    "model.name: deepsea serves sequence data, not volume; models for volume classification:
    densenet121, resnet18, ...". An unknown name raises get_entry's error.
    """
    entry = get_entry(name)
    if entry.serves(modality, task):
        return
    served, wanted = [], []
    if not entry.serves(modality=modality):
        served.append(f"{_and(entry.modalities)} data")
        wanted.append(modality)
    if not entry.serves(task=task):
        served.append(_and(entry.tasks))
        wanted.append(task)
    fits = ", ".join(models_for(modality, task)) or "none"
    raise ConfigError(f"model.name: {name} serves {' for '.join(served)}, not {' '.join(wanted)}; "
                      f"models for {modality} {task}: {fits}")  # fmt: skip


def list_models(
    in_channels: int = 1, out_dim: int = 2, modality: str | None = None, task: str | None = None
) -> list[dict[str, Any]]:
    """Every registered model serving `modality` data and a `task` task (None: any), with the
    modalities and tasks it serves (() for any) and its parameter count for the given input /
    output size (each entry's `listing_inputs` turns `in_channels` into its input arguments)."""
    rows = []
    for name in models_for(modality, task):
        entry = _REGISTRY[name]
        inputs = {**entry.listing_inputs(in_channels), "out_dim": out_dim}
        check_bounds(name, entry.builder, inputs)  # e.g. --in-channels 0
        model = entry.builder(**inputs)
        rows.append({
            "name": name,
            "modalities": entry.modalities,
            "tasks": entry.tasks,
            "parameters": count_parameters(model),
            "description": entry.description,
        })
    return rows
