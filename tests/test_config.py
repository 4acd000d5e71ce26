"""The experiment schema: typos, bad values and overrides are caught before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from biomx.cli import DEMO_CONFIG
from biomx.config import apply_overrides, load_config, validate
from biomx.errors import ConfigError
from biomx.experiment import check_config

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"data": {"source": "dataset", "path": "pneumoniamnist"}}


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        check_config(validate(raw))
    return str(info.value)


def test_minimal_config_gets_defaults():
    cfg = validate(MINIMAL)
    assert cfg.train.epochs == 10 and cfg.model.name == "small_cnn" and cfg.data.split.method == "stratified"


def test_typo_names_key_and_suggests_fix():
    message = _error({**MINIMAL, "train": {"epochz": 3}})
    assert message.startswith("train.epochz: unknown key; did you mean 'epochs'?")
    assert "\n" not in message


def test_nested_typo_and_several_problems_reported_together():
    message = _error({"data": {"source": "dataset", "path": "x", "splt": {}}, "train": {"optimizer": {"lr": -1}}})
    lines = message.splitlines()
    assert any(line.startswith("data.splt: unknown key; did you mean 'split'?") for line in lines)
    assert any(line.startswith("train.optimizer.lr:") and "greater than 0" in line and "-1" in line for line in lines)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**MINIMAL, "train": {"precision": "fp8"}}, "train.precision: Input should be 'fp32', 'bf16' or 'fp16'"),
        ({**MINIMAL, "model": {"name": "resnet19"}}, "model.name: unknown model 'resnet19' (did you mean 'resnet18'?)"),
        ({**MINIMAL, "model": {"name": "resnet18", "args": {"stemm": "small"}}}, "model.args.stemm: resnet18 has no argument"),
        ({**MINIMAL, "train": {"monitor": "val_aurc"}}, "train.monitor: unknown metric 'val_aurc' (did you mean 'val_auroc'?)"),
        ({"data": {"source": "folder", "path": "x"}}, "data: image.size is required for folder, csv and shards sources"),
        ({"data": {"source": "dataset", "path": "x", "split": {"val": 1.5}}}, "data.split.val: Input should be less than 1"),
        ({"model": {}}, "data: required key is missing"),
        ({**MINIMAL, "task": {"min_component_size": 10}}, "task.min_component_size: unknown key; it belongs to task.kind: segmentation"),
        ({**MINIMAL, "task": {"kind": "regression", "loss": "dice"}}, "task.loss: Input should be 'mse', 'huber' or 'mae' (got 'dice')"),
        ({**MINIMAL, "task": {"kind": "fitting"}}, "unknown task 'fitting'"),
    ],
)
def test_bad_values_name_the_key(raw, expected):
    assert expected in _error(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {**MINIMAL["data"], "image_size": [64, 64]}}, "data.image_size: unknown key; it is data.image.size now"),
        ({"data": {**MINIMAL["data"], "channels": 3}}, "data.channels: unknown key; it is data.image.channels now"),
        ({"data": {**MINIMAL["data"], "window": [40, 400]}}, "data.window: unknown key; it is data.image.window now"),
        ({"data": {**MINIMAL["data"], "path_column": "file"}}, "data.path_column: unknown key; it is data.image.path_column now"),
        ({"data": {**MINIMAL["data"], "normalize": False}}, "data.normalize: unknown key; it is data.image.normalize now"),
        ({"data": {**MINIMAL["data"], "cache": False}}, "data.cache: unknown key; it is data.image.cache now"),
        ({"data": {**MINIMAL["data"], "augment": {"hflip": 0.5}}}, "data.augment: unknown key; it is data.image.augment now"),
        ({"data": {"source": "msd", "path": "x", "volume": {"intensity": "minmax"}}, "task": {"kind": "segmentation"}},
         "data.volume: unknown key; it is data.image.scan now"),
        ({"data": {"source": "npz", "path": "x", "modality": "volume", "normalize": False}},
         "data.normalize: unknown key; it is data.volume.normalize now"),
        ({"data": {"source": "npz", "path": "x", "modality": "volume", "augment": {"flip": 0.5}}},
         "data.augment: unknown key; it is data.volume.augment now"),
    ],
)
def test_moved_keys_name_their_new_place(raw, expected):
    message = _error(raw)
    assert message.startswith(expected) and "\n" not in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({**MINIMAL, "task": {"target_name": "logS"}}, "task.target_name: unknown key; it belongs to task.kind: regression"),
        ({**MINIMAL, "task": {"patch_size": [64, 64]}}, "task.patch_size: unknown key; it belongs to task.kind: detection or segmentation"),
        ({**MINIMAL, "task": {"kind": "regression", "threshold": 0.3}}, "task.threshold: unknown key; it belongs to task.kind: classification"),
        ({**MINIMAL, "task": {"loss": "mse"}}, "it belongs to task.kind: regression or segmentation"),
        ({"data": {**MINIMAL["data"], "molecule": {"smiles_column": "smi"}}}, "data.molecule: unknown key; it belongs to data.modality: molecule"),
        ({"data": {"source": "npz", "path": "x", "modality": "volume", "image": {"size": [28, 28]}}},
         "data.image: unknown key; it belongs to data.modality: image"),
    ],
)
def test_keys_of_another_task_or_modality_name_their_owner(raw, expected):
    assert expected in _error(raw)


def test_keys_moved_out_of_split_eval_and_the_scan_section_are_refused():
    # Now data.sequence.*_chromosomes, data.molecule.cluster_cutoff, task.patch_size and
    # task.surface_tolerance_mm: the old places are unknown keys, not silently ignored.
    seq = {"modality": "sequence", "source": "fasta", "path": "x"}
    assert _error({"data": {**seq, "split": {"test_chromosomes": ["chr9"]}}}).startswith("data.split.test_chromosomes: unknown key")
    mol = {"modality": "molecule", "source": "csv", "path": "x"}
    assert _error({"data": {**mol, "split": {"method": "cluster", "cluster_cutoff": 0.4}}}).startswith(
        "data.split.cluster_cutoff: unknown key")
    seg = {"data": {"modality": "volume", "source": "msd", "path": "x", "volume": {"patch_size": [16, 16, 16]}},
           "task": {"kind": "segmentation"}}  # fmt: skip
    assert _error(seg).startswith("data.volume.patch_size: unknown key")
    assert _error({**MINIMAL, "eval": {"surface_tolerance_mm": 2.0}}).startswith("eval.surface_tolerance_mm: unknown key")


def test_modality_and_task_sections_in_their_new_places():
    cfg = validate({"data": {"modality": "sequence", "source": "fasta", "path": "x", "split": {"method": "chromosome"},
                             "sequence": {"val_chromosomes": ["chr7"], "test_chromosomes": ["chr8"]}}})  # fmt: skip
    assert cfg.data.sequence.test_chromosomes == ["chr8"] and cfg.task.kind == "classification"
    with pytest.raises(ConfigError, match=r"data: split method 'chromosome' needs sequence.test_chromosomes"):
        validate({"data": {"modality": "sequence", "source": "fasta", "path": "x", "split": {"method": "chromosome"}}})
    cfg = validate({"data": {"modality": "molecule", "source": "csv", "path": "x", "split": {"method": "cluster"},
                             "molecule": {"cluster_cutoff": 0.4}}, "task": {"kind": "regression", "loss": "huber"}})  # fmt: skip
    assert cfg.data.molecule.cluster_cutoff == 0.4 and cfg.task.loss == "huber"
    cfg = validate({"data": {"modality": "volume", "source": "msd", "path": "x", "volume": {"intensity": "ct"}},
                    "task": {"kind": "segmentation", "patch_size": [16, 16, 16], "surface_tolerance_mm": 2.0}})
    assert cfg.data.volume.intensity == "ct" and cfg.task.patch_size == [16, 16, 16] and cfg.task.surface_tolerance_mm == 2.0
    cfg = validate({"data": {"source": "msd", "path": "x", "image": {"scan": {"intensity": "minmax"}}},
                    "task": {"kind": "segmentation", "patch_size": [64, 64]}})
    assert cfg.data.image.scan.intensity == "minmax" and cfg.data.image.size is None


def test_overrides_parse_yaml_values_and_are_validated(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(path, ["train.epochs=3", "train.optimizer.lr=1e-4", "data.image.augment.scale=[0.9, 1.1]"])
    assert cfg.train.epochs == 3 and cfg.train.optimizer.lr == 1e-4 and cfg.data.image.augment.scale == (0.9, 1.1)
    with pytest.raises(ConfigError, match=r"train.epochs: Input should be greater than 0 \(got -2\)"):
        load_config(path, ["train.epochs=-2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  source: npz\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_config(path)


def test_relative_data_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "exp.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "npz", "path": "../data.npz"}}))
    assert load_config(path).data.path == str((tmp_path / "data.npz").resolve())
    # paths inside a modality's section too (data.volume.cache_dir, data.image.scan.cache_dir)
    path.write_text(yaml.safe_dump({"data": {"source": "npz", "modality": "volume", "path": "v.npz",
                                             "volume": {"cache_dir": "../cache"}}}))  # fmt: skip
    assert load_config(path).data.volume.cache_dir == str((tmp_path / "cache").resolve())
    path.write_text(yaml.safe_dump({"data": {"source": "msd", "path": ".", "image": {"scan": {"cache_dir": "c"}}}}))
    assert load_config(path).data.image.scan.cache_dir == str((tmp_path / "sub" / "c").resolve())


def test_config_cannot_execute_code(tmp_path):
    # YAML tags that construct Python objects are refused by the safe loader.
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


NOT_EXPERIMENTS = {"deid.yaml"}  # a de-identification config: tests/test_deid_config.py checks it


@pytest.mark.parametrize("path", [DEMO_CONFIG, *sorted(p for p in (ROOT / "examples").glob("*.yaml")
                                                       if p.name not in NOT_EXPERIMENTS)], ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    check_config(load_config(path))
