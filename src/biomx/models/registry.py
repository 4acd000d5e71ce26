"""One explicit registry of buildable models.

Configs name a model; only names registered here can be built (no dotted-path imports,
no code from a config). Arguments are checked against the builder's signature before
anything is built, so a typo names the bad key and the closest valid one.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from biomx.errors import ConfigError
from biomx.models import image2d, molecule, segmentation, sequence


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    modality: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, builder: Callable[..., nn.Module], modality: str, description: str) -> None:
    """Add a model builder to the zoo under `name` (e.g. from a plug-in module)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, builder, modality, description)


register("small_cnn", image2d.small_cnn, "image", "VGG-style CNN, fast on CPU (the demo model)")
register("resnet18", image2d.resnet18, "image", "ResNet-18 (MONAI)")
register("resnet34", image2d.resnet34, "image", "ResNet-34 (MONAI)")
register("resnet50", image2d.resnet50, "image", "ResNet-50, bottleneck blocks (MONAI)")
register("densenet121", image2d.densenet121, "image", "DenseNet-121 (MONAI), CheXNet backbone")
register("deepsea", sequence.deepsea, "sequence", "DeepSEA, 3-layer DNA CNN (Zhou 2015)")
register("basset", sequence.basset, "sequence", "Basset, DNA CNN with batch norm (Kelley 2016)")
register("danq", sequence.danq, "sequence", "DanQ, DNA CNN + BiLSTM (Quang & Xie 2016)")
register(
    "sequence_transformer",
    sequence.sequence_transformer,
    "sequence",
    "Small transformer encoder over patches, padding-masked",
)
register("protein_cnn", sequence.protein_cnn, "sequence", "Multi-kernel protein CNN, max pool")
register("protein_lstm", sequence.protein_lstm, "sequence", "Protein BiLSTM, mean + max pool")
register("dmpnn", molecule.dmpnn, "molecule", "Directed message passing network (chemprop, Yang 2019)")
register("gin", molecule.gin, "molecule", "GIN with bond features (Xu 2019; GINE, Hu 2020)")
register("attentive_fp", molecule.attentive_fp, "molecule", "AttentiveFP graph attention (Xiong 2020)")
register(
    "fingerprint_mlp",
    molecule.fingerprint_mlp,
    "molecule",
    "MLP on Morgan fingerprints / RDKit descriptors (no graph)",
)
register("unet", segmentation.unet, "segmentation", "Residual UNet (MONAI), 2D/3D segmentation baseline")
register("segresnet", segmentation.segresnet, "segmentation", "SegResNet (MONAI, Myronenko 2018), 2D/3D")
register(
    "swin_unetr",
    segmentation.swin_unetr,
    "segmentation",
    "SwinUNETR (MONAI, Hatamizadeh 2022): Swin encoder + CNN decoder, 2D/3D",
)


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
    """Raise ConfigError if `args` has a key the builder does not take."""
    params = inspect.signature(get_entry(name).builder).parameters
    for key in args:
        if key not in params:
            raise ConfigError(
                f"model.args.{key}: {name} has no argument {key!r}{suggest(key, list(params))}; "
                f"allowed: {', '.join(params)}"
            )


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
    check_model_args(name, args)
    try:
        return get_entry(name).builder(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.args: cannot build {name} with {args}: {err}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def list_models(in_channels: int = 1, out_dim: int = 2) -> list[dict[str, Any]]:
    """Every registered model with its parameter count for the given input/output size."""
    rows = []
    for name in model_names():
        entry = _REGISTRY[name]
        # Sequence models count with their own alphabet size (4 for DNA, 20 for protein);
        # molecule models with chemprop's atom / bond sizes or a 2048-bit fingerprint.
        inputs: dict[str, int] = {}
        if entry.modality in ("image", "segmentation"):
            inputs = {"in_channels": in_channels}
        elif entry.modality == "molecule":
            inputs = molecule.listing_inputs(name)
        model = entry.builder(**inputs, out_dim=out_dim)
        rows.append({
            "name": name,
            "modality": entry.modality,
            "parameters": count_parameters(model),
            "description": entry.description,
        })
    return rows
