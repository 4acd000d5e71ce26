"""The part of a resolved config that applies to one run, for the report.

A full dump lists defaults a reader of this run never needs (e.g. how paired scans would be read,
in a run that reads a folder of PNGs). The report shows the shared sections, the shared `data`
keys, the run's own `data.<modality>` section and its `task` section; config.yaml in the run
folder keeps every key. Everything is plain dicts: the caller names the modality (from the run
info) and the shared keys, so this module knows no modality.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from typing import Any


def _drop(config: dict[str, Any], dotted: str) -> bool:
    """Remove the key at a dotted path ("data.image.scan"); True if it was there."""
    *parents, last = dotted.split(".")
    node: Any = config
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def run_config(config: dict[str, Any], modality: str, shared_data_keys: Collection[str],
               unused: Collection[str] = ()) -> tuple[dict[str, Any], list[str]]:  # fmt: skip
    """What of `config` the report shows, and the dotted paths it left out.

    Args:
        config: the resolved config as a dict (e.g. `model_dump(mode="json")`).
        modality: the run's modality name; `data.<modality>` is its own section.
        shared_data_keys: the `data` keys every modality shares (kept).
        unused: dotted paths inside the run's own sections that this run does not read (e.g.
            the paired-scan settings of a run on another source). The modality's section itself
            is never left out.

    Returns:
        (the config to show, the dotted paths left out, in order).
    """
    shown = copy.deepcopy(config)
    dropped: list[str] = []
    data = shown.get("data")
    if isinstance(data, dict):
        for key in list(data):
            if key not in shared_data_keys and key != modality:
                del data[key]
                dropped.append(f"data.{key}")
    own = f"data.{modality}"
    for path in unused:
        if path != own and path.startswith("data.") and _drop(shown, path):
            dropped.append(path)
    return shown, dropped
