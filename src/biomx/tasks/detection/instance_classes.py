"""A class per instance of an instance mask, as nnDetection (MIC-DKFZ) stores detection data: the
mask `labelsTr/case_001.nii.gz` (one id per object, 0 = background) and beside it
`labelsTr/case_001.json` holding `{"instances": {"1": 0, "2": 1, ...}}` (instance id -> class
index, 0-based, no background). Without the JSON every instance is class 0.

The JSON is read afresh whenever boxes are made from a mask (it is tiny), so the case cache, which
holds the masks keyed by their files, never serves classes from an older JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from biomx.errors import DataError


class InstanceClassError(DataError):
    """A bad class JSON: its message already names the JSON file (callers add no mask path)."""


def class_file(label_path: str | Path) -> Path:
    """The JSON named like a label file: labelsTr/case_001.nii.gz -> labelsTr/case_001.json."""
    path = Path(label_path)
    name = path.name
    if name.lower().endswith(".gz"):  # .nii.gz, .mhd.gz: two suffixes make the extension
        name = name[:-3]
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    return path.with_name(stem + ".json")


def read_instance_classes(label_path: str | Path, n_classes: int) -> tuple[Path, dict[int, int]] | None:
    """(the JSON's path, {instance id: class index}) for the JSON beside `label_path`, or None
    where there is none.

    Raises:
        InstanceClassError: unreadable JSON, no "instances" mapping, an id that is no positive
            integer, a class index that is not an integer in 0..n_classes-1. One line naming the
            file (and the id).
    """
    path = class_file(label_path)
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InstanceClassError(f"{path}: not readable as JSON ({err})") from None
    instances = info.get("instances") if isinstance(info, dict) else None
    if not isinstance(instances, dict):
        raise InstanceClassError(f'{path}: no "instances" mapping (nnDetection\'s layout: '
                                 '{"instances": {"1": 0, "2": 1}}, instance id -> class index)')  # fmt: skip
    classes: dict[int, int] = {}
    for key, value in instances.items():
        try:
            instance = int(key)
        except ValueError:
            instance = 0
        if instance <= 0 or str(instance) != str(key).strip():
            raise InstanceClassError(f'{path}: instance {key!r}: ids are positive integers, such as "1"')
        # bool is an int in Python, but `true` is no class index
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_classes:
            raise InstanceClassError(f"{path}: instance {instance}: class {value!r} is outside task.classes "
                                     f"(0..{n_classes - 1}, {n_classes} class(es), 0-based, no background)")  # fmt: skip
        classes[instance] = value
    return path, classes


def instance_labels(ids: np.ndarray, found: tuple[Path, dict[int, int]] | None) -> np.ndarray:
    """Class index per instance id (all 0 without a JSON); ids in the JSON but not in the mask
    (cropped away, say) do not matter.

    Raises:
        InstanceClassError: an id of the mask that the JSON does not list.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if found is None:
        return np.zeros(len(ids), dtype=np.int64)
    path, classes = found
    missing = [int(i) for i in ids if int(i) not in classes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InstanceClassError(f'{path}: instance {missing[0]}{more} is in the mask but not in "instances"')
    return np.asarray([classes[int(i)] for i in ids], dtype=np.int64)
