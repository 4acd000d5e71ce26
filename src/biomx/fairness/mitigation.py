"""Mitigation: reweighting by group (Kamiran & Calders reweighing).

`group_weights` is Kamiran & Calders' reweighing (2012): each training sample gets
w = P(group) P(label) / P(group, label), estimated on the training split, so that group and label
are independent in the weighted data; a (group, label) cell that is rarer than independence
predicts weighs more. The weights average to 1 over the training split.

`train.fairness.reweight` applies these weights in training (`biomx.fairness.training`: a
weighted sampler). Per-group thresholds need no training change: the task fits them on the
validation split when `eval.subgroups` is set (`protocols.GroupedTask.group_thresholds`) and the
report shows the test disparity before and after.
"""

from __future__ import annotations

import numpy as np

from biomx.errors import ConfigError


def group_weights(groups: np.ndarray, labels: np.ndarray, train_index: np.ndarray) -> np.ndarray:
    """One weight per sample (float32): reweighing fitted on `train_index`; samples outside the
    training split get weight 1."""
    groups, labels = np.asarray(groups).astype(str), np.asarray(labels).astype(str)
    if len(groups) != len(labels):
        raise ConfigError(f"train.fairness.reweight: {len(groups)} group labels for {len(labels)} samples")
    weights = np.ones(len(groups), dtype=np.float64)
    train_index = np.asarray(train_index, dtype=np.int64)
    if not len(train_index):
        return weights.astype(np.float32)
    g, y = groups[train_index], labels[train_index]
    n = len(train_index)
    p_group = {k: c / n for k, c in zip(*np.unique(g, return_counts=True), strict=True)}
    p_label = {k: c / n for k, c in zip(*np.unique(y, return_counts=True), strict=True)}
    cells, counts = np.unique(np.stack([g, y], axis=1), axis=0, return_counts=True)
    joint = {(a, b): c / n for (a, b), c in zip(cells.tolist(), counts, strict=True)}
    for i in train_index:
        weights[i] = p_group[groups[i]] * p_label[labels[i]] / joint[(groups[i], labels[i])]
    weights[train_index] /= weights[train_index].mean()
    return weights.astype(np.float32)
