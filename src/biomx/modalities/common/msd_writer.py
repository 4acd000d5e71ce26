"""Writing a segmentation dataset in the Medical Segmentation Decathlon layout (see `msd.py`,
which reads it): the output folder, dataset.json (written last, so a folder with a
dataset.json is complete), and the line `biomx datasets --export` prints about it.

Every `biomx datasets --export` follows one rule (`refuse_existing`): when any file the export
would write already exists, it writes nothing and names the first such file, unless
`--overwrite` is given; other files in the folder are never touched."""

from __future__ import annotations

import json
from collections.abc import Iterable
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


def refuse_existing(targets: Iterable[Path], overwrite: bool = False) -> None:
    """ConfigError naming the first of `targets` (the files an export would write) that already
    exists, unless `overwrite`; called before anything is written."""
    if overwrite:
        return
    try:
        existing = [path for path in targets if path.exists() or path.is_symlink()]
    except OSError as e:  # a name too long, no permission
        name = str(e.filename)
        name = name if len(name) <= 80 else name[:77] + "..."
        raise ConfigError(f"{name}: cannot check the output files ({e.strerror or e})") from None
    if existing:
        more = f" (and {len(existing) - 1} more files the export writes)" if len(existing) > 1 else ""
        raise ConfigError(f"{existing[0]}: already exists{more}; nothing was written "
                          "(biomx datasets --overwrite replaces existing files)")  # fmt: skip


def msd_files(out: Path, names: list[str], ext: str) -> list[Path]:
    """Every file an MSD export of the cases `names` writes: dataset.json and each image/label pair."""
    return [out / "dataset.json", *(out / folder / f"{n}{ext}" for folder in ("imagesTr", "labelsTr") for n in names)]


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
