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
        ({"data": {"source": "folder", "path": "x"}}, "data: image_size is required"),
        ({"data": {"source": "dataset", "path": "x", "split": {"val": 1.5}}}, "data.split.val: Input should be less than 1"),
        ({"model": {}}, "data: required key is missing"),
        ({**MINIMAL, "task": {"min_component_size": 10}}, "task: min_component_size applies to kind 'segmentation' only; remove it"),
    ],
)
def test_bad_values_name_the_key(raw, expected):
    assert expected in _error(raw)


def test_overrides_parse_yaml_values_and_are_validated(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    cfg = load_config(path, ["train.epochs=3", "train.optimizer.lr=1e-4", "data.augment.scale=[0.9, 1.1]"])
    assert cfg.train.epochs == 3 and cfg.train.optimizer.lr == 1e-4 and cfg.data.augment.scale == (0.9, 1.1)
    with pytest.raises(ConfigError, match=r"train.epochs: Input should be greater than 0 \(got -2\)"):
        load_config(path, ["train.epochs=-2"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.epochs"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  source: npz\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ invalid YAML"):
        load_config(path)


def test_relative_data_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "exp.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "npz", "path": "../data.npz"}}))
    assert load_config(path).data.path == str((tmp_path / "data.npz").resolve())


def test_config_cannot_execute_code(tmp_path):
    # YAML tags that construct Python objects are refused by the safe loader.
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


@pytest.mark.parametrize("path", [DEMO_CONFIG, *sorted((ROOT / "examples").glob("*.yaml"))], ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    check_config(load_config(path))
