"""Modalities: each kind of data is a plug-in in its own folder, behind `biomx.protocols.Modality`.

One registry line per modality. A modality never imports another; what two of them share
lives in `modalities/common/`.
"""

from __future__ import annotations

from biomx.plugins import Registry
from biomx.protocols import Modality

MODALITIES = Registry("modality", "data.modality", {
    "image": "biomx.modalities.image",
    "volume": "biomx.modalities.volume",
    "sequence": "biomx.modalities.sequence",
    "molecule": "biomx.modalities.molecule",
    "tabular": "biomx.modalities.tabular",
    "history": "biomx.modalities.history",
})  # fmt: skip


def get_modality(name: str) -> Modality:
    """The plug-in registered as `name` (ConfigError naming the closest name otherwise)."""
    return MODALITIES.get(name)


def register_modality(name: str, plugin: Modality) -> None:
    MODALITIES.register(name, plugin)


def modality_names() -> list[str]:
    return MODALITIES.names()


__all__ = ["MODALITIES", "get_modality", "modality_names", "register_modality"]
