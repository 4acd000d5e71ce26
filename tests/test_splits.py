"""Splits: stratified keeps class balance, grouped keeps patients apart, leakage is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from biomx.cli import main
from biomx.data.splits import shared_groups, split_indices, warn_if_leaking
from biomx.errors import ConfigError


def test_stratified_split_keeps_class_proportions(xrays):
    labels = xrays[1].numpy().astype(int)
    splits = split_indices(len(labels), method="stratified", val=0.2, test=0.2, seed=3, labels=labels)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(len(labels)))
    overall = labels.mean()
    for idx in splits.values():
        assert abs(labels[idx].mean() - overall) < 0.02
    again = split_indices(len(labels), method="stratified", val=0.2, test=0.2, seed=3, labels=labels)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)  # seeded
    other = split_indices(len(labels), method="stratified", val=0.2, test=0.2, seed=4, labels=labels)
    assert not np.array_equal(splits["test"], other["test"])


def test_group_split_never_shares_a_patient(capsys):
    groups = np.array([f"P{i // 3}" for i in range(300)], dtype=object)  # 3 images per patient
    splits = split_indices(300, method="group", val=0.2, test=0.2, seed=0, groups=groups)
    assert shared_groups(groups, splits) == set()
    assert warn_if_leaking(groups, splits) == 0
    random = split_indices(300, method="random", val=0.2, test=0.2, seed=0)
    leaked = warn_if_leaking(groups, random)
    assert leaked > 0
    err = capsys.readouterr().err
    assert f"WARNING: {leaked} patients have images in more than one split" in err and "P1" not in err


def test_split_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"val \+ test must be < 1"):
        split_indices(10, val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="'group' needs patient ids"):
        split_indices(10, method="group", val=0.2, test=0.2)


def test_models_and_datasets_are_listed(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, params in [("resnet18", "11,1"), ("resnet50", "23,5"), ("densenet121", "6,9"), ("small_cnn", "")]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert params in line
    assert main(["datasets"]) == 0
    assert "pneumoniamnist" in capsys.readouterr().out
