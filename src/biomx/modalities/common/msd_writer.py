"""Writing a segmentation dataset in the Medical Segmentation Decathlon layout (see `msd.py`,
which reads it): the output folder, dataset.json (written last, so a folder with a
dataset.json is complete), and the line `biomx datasets --export` prints about it."""

from __future__ import annotations

import json
from pathlib import Path

from biomx.engine.checkpoint import atomic_write_text
from biomx.errors import ConfigError


def out_folder(out_dir: str | Path) -> Path:
    """`out_dir`, created with its parents; ConfigError when that is impossible."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, no permission
        raise ConfigError(f"{out}: cannot create the output folder ({e.strerror or e})") from e
    return out


def write_dataset_json(out: Path, info: dict, training: list[str], ext: str) -> Path:
    """`out/dataset.json` (atomically): `info` plus the training cases `training` (names of
    `imagesTr/<name><ext>` and `labelsTr/<name><ext>` pairs) and no test cases."""
    info = {**info, "numTraining": len(training), "numTest": 0,
            "training": [{"image": f"./imagesTr/{n}{ext}", "label": f"./labelsTr/{n}{ext}"} for n in training],
            "test": []}  # fmt: skip
    path = out / "dataset.json"
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


def written_line(name: str, spec: Path) -> str:
    """'wrote NAME: N cases (imagesTr/, labelsTr/) and .../dataset.json'."""
    cases = json.loads(spec.read_text())["numTraining"]
    return f"wrote {name}: {cases} cases (imagesTr/, labelsTr/) and {spec}"
