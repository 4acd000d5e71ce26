"""DP-SGD (train.privacy) on every modality's default networks, on small real data: each trains one
epoch at epsilon 8 (BatchNorm converted where it has some) and its model loads back, or it is
refused in one line naming the layer. docs/privacy.md, "Which models train with DP", is this table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from biomx.cli import main
from biomx.config import validate
from biomx.errors import ConfigError
from biomx.experiment import train
from biomx.modalities.molecule.starter_data import export_molecules
from biomx.models.norms import batchnorm_layers
from biomx.privacy.ledger import within_budget
from biomx.runs import load_run_model
from data_paths import DNA, MEDMNIST

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory, png_folder) -> dict[str, dict]:
    """Each modality's `data:` section over a few real samples."""
    root = tmp_path_factory.mktemp("dp_data")
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:  # the central 16^3 of 28^3 CT crops (a fast 3D ResNet)
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:n] for s, n in (("train", 20), ("val", 8)) for k in ("images", "labels")}
    arrays = {k: v[:, 6:22, 6:22, 6:22] if k.endswith("images") else v for k, v in arrays.items()}
    np.savez_compressed(root / "adrenal.npz", **arrays)
    for name, src in (("oct4", "sample.fa"), ("mafk", "sample2.fa")):  # the first 48 windows of each
        lines = (DNA / src).read_text().splitlines()
        (root / f"{name}.fa").write_text("\n".join(lines[: 2 * 48]) + "\n")
    for name in ("breast_cancer", "aids"):
        assert main(["datasets", "--name", name, "--export", str(root), "--limit", "120"]) == 0
    split = {"method": "stratified", "val": 0.15, "test": 0.2, "seed": 0}
    return {
        "image": {"modality": "image", "source": "folder", "path": str(png_folder), "image": {"size": [28, 28]}},
        "volume": {"modality": "volume", "source": "npz", "path": str(root / "adrenal.npz"),
                   "split": {"method": "predefined", "holdout": "val"}},
        "sequence": {"modality": "sequence", "source": "fasta", "path": str(root),
                     "sequence": {"files": {"Oct4": "oct4.fa", "Mafk": "mafk.fa"}}, "split": split},
        "molecule": {"modality": "molecule", "source": "csv", "path": str(export_molecules("freesolv", root, limit=120)),
                     "label_column": "expt", "molecule": {"id_column": "id", "features": ["morgan"]}, "split": {**split, "method": "random"}},
        "tabular": {"modality": "tabular", "source": "csv", "path": str(root / "breast_cancer.csv"),
                    "label_column": "diagnosis", "tabular": {"id_column": "id"}, "split": split},
        "history": {"modality": "history", "source": "csv", "path": str(root / "aids_history.csv"),
                    "label_column": ["time", "event"], "split": split,
                    "history": {"baseline": str(root / "aids_baseline.csv"), "layout": "wide"}},
    }  # fmt: skip


def _config(data: dict, modality: str, model: str, args: dict, root: Path, task: dict | None = None) -> dict:
    return {
        "name": model,
        "data": data[modality],
        "model": {"name": model, "args": args},
        "task": task or ({"kind": "regression"} if modality == "molecule" else {}),
        "train": {"epochs": 1, "batch_size": 16, "progress": False, "device": "cpu",
                  "privacy": {"epsilon": 8, "baseline": False}},
        "eval": {"bootstrap": 0, "explain": 0},
        "output": {"dir": str(root), "name": model, "tensorboard": False},
    }  # fmt: skip


SURVIVAL = {"kind": "survival", "model": "cox", "horizons": [6, 12]}


@pytest.mark.parametrize("modality, model, args, converted", [
    ("image", "small_cnn", {"width": 4, "depth": 2}, "norm: group"),
    ("volume", "resnet18", {}, "batchnorm: group"),  # MONAI's 3D ResNet: every BatchNorm3d swapped
    ("sequence", "deepsea", {"width": 16}, None),
    ("molecule", "fingerprint_mlp", {"hidden_sizes": [32]}, "norm: layer"),
    ("tabular", "tabular_mlp", {"width": 32, "depth": 2}, "norm: layer"),
])  # fmt: skip
def test_a_default_network_trains_one_dp_epoch(data, tmp_path, modality, model, args, converted):
    run = train(validate(_config(data, modality, model, args, tmp_path)))
    ledger = json.loads((run / "privacy.json").read_text())
    assert within_budget(ledger) and 0 < ledger["epsilon"] <= 8 * 1.01 and ledger["steps"] >= 1
    recorded = json.loads((run / "run.json").read_text())["model"]
    if converted:
        key, value = converted.split(": ")
        assert (recorded.get("batchnorm") if key == "batchnorm" else recorded["args"].get(key)) == value
    loaded, _ = load_run_model(run)  # the converted model rebuilt from the checkpoint alone
    assert not batchnorm_layers(loaded) and (run / "test_metrics.json").is_file()


@pytest.mark.parametrize("modality, model, args, task, says", [
    ("sequence", "danq", {}, None, "(We do not support nn.LSTM because its implementation uses special modules, "
                                   "layer 'lstm')"),
    ("sequence", "sequence_transformer", {"dim": 16, "depth": 1}, None, "nn.MultiheadAttention"),
    ("molecule", "dmpnn", {"hidden": 16, "depth": 2}, None, "sees"),
    ("history", "history_gru", {"width": 8}, SURVIVAL, "nn.GRU"),
    ("history", "history_transformer", {"width": 8}, SURVIVAL, "nn.MultiheadAttention"),
])  # fmt: skip
def test_what_cannot_train_with_dp_is_one_line(data, tmp_path, modality, model, args, task, says):
    with pytest.raises(ConfigError) as err:
        train(validate(_config(data, modality, model, args, tmp_path, task)))
    line = str(err.value)
    assert line.startswith(f"model.name: {model} cannot be trained with DP-SGD") and says in line, line
    assert len(line.splitlines()) == 1 and not (tmp_path / model).exists()
