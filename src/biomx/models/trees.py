"""Tree ensembles fitted by a solver (`protocols.FittedModel`): a random forest (scikit-learn)
and a gradient-boosted booster (LightGBM), both predicted in pure torch.

All fitted trees are stored back to back in flat node arrays (no padding, so a checkpoint holds
only real nodes): left and right child (as indices into the flat arrays), split feature,
threshold, and the leaf values (nodes, scores); `roots` holds each tree's first node and a leaf
points to itself. `traverse` moves every (row, tree) pair down one level per step, `depth` steps in all
(x <= threshold goes left), and the scores are the sum over trees of the leaves reached (a
forest's leaf values are divided by its number of trees, so the sum is the mean). Thresholds are
stored as the largest float32 not above the solver's float64 threshold, so float32 inputs split
exactly as the solver splits them.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor, nn

from biomx.models.bounds import Between, OutDim, Rate
from biomx.models.solvers import (
    LOGITS,
    PROBABILITIES,
    VALUES,
    Features,
    SolverModule,
    features_of,
    solver_problem,
)
from biomx.plugins import import_extra

EARLY_STOPPING_ROUNDS = 50
HOLDOUT = 0.1  # of the training rows, for early stopping when there is no validation split


def traverse(x: Tensor, roots: Tensor, left: Tensor, right: Tensor, feature: Tensor, threshold: Tensor,
             depth: int) -> Tensor:  # fmt: skip
    """(N, T) the flat index of the leaf each row of `x` (N, F) reaches in each of the T trees
    starting at `roots` (T,) in the flat node arrays; `depth` steps (a leaf points to itself)."""
    at = roots[None, :].expand(x.shape[0], -1)
    for _ in range(depth):  # `at`: the flat index of each (row, tree)'s node
        goes_left = x.gather(1, feature[at].long()) <= threshold[at]
        at = torch.where(goes_left, left[at], right[at]).long()
    return at


def float32_floor(threshold: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 threshold: x <= t and x <= floor32(t) agree for any
    float32 x."""
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


class TreeEnsemble(SolverModule):
    """The shared buffers and prediction of the forest and the booster."""

    def __init__(self, feature_dim: int, out_dim: int) -> None:
        super().__init__(out_dim)
        if feature_dim <= 0:
            raise ValueError("this model needs feature_dim > 0: set data.molecule.features, e.g. [morgan]")
        self.feature_dim = feature_dim
        self.register_buffer("roots", torch.zeros(0, dtype=torch.int64))
        for name in ("left", "right", "feature"):  # int32: half the checkpoint of int64
            self.register_buffer(name, torch.zeros(0, dtype=torch.int32))
        self.register_buffer("threshold", torch.zeros(0))
        self.register_buffer("value", torch.zeros(0, out_dim))
        self.register_buffer("depth", torch.tensor(0, dtype=torch.int64))

    def scores(self, x: Tensor) -> Tensor:
        x = x.float()
        leaf = traverse(x, self.roots, self.left, self.right, self.feature, self.threshold, int(self.depth))
        return self.value[leaf].sum(dim=1)

    def _store(self, trees: list[dict[str, np.ndarray]], mode: int) -> None:
        """Store the trees (dicts of left, right, feature, threshold, value (nodes, scores), depth;
        child indices within the tree) back to back in the flat buffers."""
        sizes = np.array([len(t["left"]) for t in trees])
        roots = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        if sizes.sum() >= 2**31:
            raise ValueError(f"{sizes.sum()} tree nodes: too many to store; use fewer trees or a larger min_samples_leaf")
        self._set(roots=roots,
                  left=np.concatenate([t["left"] + r for t, r in zip(trees, roots, strict=True)]),
                  right=np.concatenate([t["right"] + r for t, r in zip(trees, roots, strict=True)]),
                  feature=np.concatenate([t["feature"] for t in trees]),
                  threshold=np.concatenate([float32_floor(np.asarray(t["threshold"], np.float64)) for t in trees]),
                  value=np.concatenate([t["value"] for t in trees]), depth=max(int(t["depth"]) for t in trees))  # fmt: skip
        self._mark_fitted(mode)


# ---------------------------------------------------------------------------------- the forest


def _sklearn_tree(tree: Any, columns: list[int], scores: int, scale: float, proba: bool) -> dict[str, np.ndarray]:
    """scikit-learn's `tree_` as node arrays; its outputs go to score `columns` (of `scores`)."""
    is_leaf = tree.children_left < 0
    nodes = np.arange(tree.node_count)
    raw = tree.value[:, 0, :] if proba else tree.value[:, :, 0]
    if proba:  # class distributions (fractions since scikit-learn 1.4, counts before): normalise
        raw = raw / np.clip(raw.sum(axis=1, keepdims=True), 1e-300, None)
    value = np.zeros((tree.node_count, scores))
    value[:, columns] = raw * scale
    return {"left": np.where(is_leaf, nodes, tree.children_left), "right": np.where(is_leaf, nodes, tree.children_right),
            "feature": np.where(is_leaf, 0, tree.feature), "threshold": np.where(is_leaf, 0.0, tree.threshold),
            "value": np.where(is_leaf[:, None], value, 0.0), "depth": tree.max_depth}  # fmt: skip


class RandomForest(TreeEnsemble):
    """scikit-learn's random forest (regression: one forest per target on its observed rows, or
    one multi-output forest when none is missing; classes: a classifier whose score is the mean
    of its trees' class distributions)."""

    def __init__(self, feature_dim: int, out_dim: int, trees: int, max_features: float, min_samples_leaf: int,
                 max_depth: int) -> None:  # fmt: skip
        super().__init__(feature_dim, out_dim)
        if not 0.0 < max_features <= 1.0:
            raise ValueError(f"max_features is a fraction of the features in (0, 1]; got {max_features}")
        self.trees, self.max_features, self.min_samples_leaf, self.max_depth = trees, max_features, min_samples_leaf, max_depth
        self.value = torch.zeros(0, max(out_dim, 2))  # classes: one score per class

    def _forest(self, classes: bool, seed: int) -> Any:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        kind = RandomForestClassifier if classes else RandomForestRegressor
        return kind(n_estimators=self.trees, max_features=self.max_features, min_samples_leaf=self.min_samples_leaf,
                    max_depth=self.max_depth or None, n_jobs=torch.get_num_threads(), random_state=seed)  # fmt: skip

    def fit(self, x: Any, targets: Tensor, task: Any, *, val: Any = None, seed: int = 0) -> dict[str, Any]:
        """Fit on the whole training split (a forest needs no validation split)."""
        features = features_of(x).detach().float().cpu().numpy()
        kind, y, n_classes = solver_problem(task, targets, self.out_dim)
        trees: list[dict[str, np.ndarray]] = []
        if kind == "classes":
            forest = self._forest(True, seed).fit(features, y)
            columns = [int(c) for c in forest.classes_]
            trees = [_sklearn_tree(e.tree_, columns, n_classes, 1 / self.trees, True) for e in forest.estimators_]
        elif not np.isnan(y).any():
            forest = self._forest(False, seed).fit(features, y if y.shape[1] > 1 else y[:, 0])
            columns = list(range(y.shape[1]))
            trees = [_sklearn_tree(e.tree_, columns, y.shape[1], 1 / self.trees, False) for e in forest.estimators_]
        else:
            for k in range(y.shape[1]):
                rows = np.flatnonzero(~np.isnan(y[:, k]))
                forest = self._forest(False, seed).fit(features[rows], y[rows, k])
                trees += [_sklearn_tree(e.tree_, [k], y.shape[1], 1 / self.trees, False) for e in forest.estimators_]
        self._store(trees, PROBABILITIES if kind == "classes" else VALUES)
        return {"trees": len(trees), "max_depth": int(self.depth)}


def random_forest(
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    trees: Annotated[int, Between(1, 10_000)] = 300,
    max_features: Rate = 0.1,
    min_samples_leaf: Annotated[int, Between(1, 10_000)] = 1,
    max_depth: Annotated[int, Between(0, 1_000)] = 0,
) -> nn.Module:
    """Random forest on fingerprints / descriptors (see `RandomForest`): `max_features` is the
    fraction of features tried per split, max_depth 0 = unlimited."""
    return RandomForest(feature_dim, out_dim, trees, max_features, min_samples_leaf, max_depth)


# ---------------------------------------------------------------------------------- the booster


def lightgbm_tree(structure: dict[str, Any], columns: int, column: int) -> dict[str, np.ndarray]:
    """One tree of `Booster.dump_model()` as node arrays (breadth first); its leaf values go to
    score `column` of `columns`. Numerical splits only (x <= threshold goes left)."""
    nodes, order = [structure], 0
    left, right, feature, threshold, value, depth = [], [], [], [], [], {0: 0}
    while order < len(nodes):
        node = nodes[order]
        if "leaf_value" in node:
            left.append(order), right.append(order), feature.append(0), threshold.append(0.0)
            value.append(node["leaf_value"])
        else:
            if node.get("decision_type", "<=") != "<=":
                raise ValueError(f"lightgbm: only numerical splits are supported; got {node['decision_type']!r}")
            for child in (node["left_child"], node["right_child"]):
                depth[len(nodes)] = depth[order] + 1
                nodes.append(child)
            left.append(len(nodes) - 2), right.append(len(nodes) - 1)
            feature.append(node["split_feature"]), threshold.append(float(node["threshold"]))
            value.append(0.0)
        order += 1
    scores = np.zeros((len(nodes), columns))
    scores[:, column] = value
    return {"left": np.array(left), "right": np.array(right), "feature": np.array(feature),
            "threshold": np.array(threshold, dtype=np.float64), "value": scores, "depth": max(depth.values())}  # fmt: skip


def _threads(rows: int) -> int:
    """LightGBM's threads: one per 10,000 rows up to torch's thread count. On a few thousand
    molecules more threads only wait on each other (measured: 60 rounds on 240 rows took 0.1 s
    with one thread and 6 s with two on a busy 2-core machine)."""
    return max(1, min(torch.get_num_threads(), 1 + rows // 10_000))


class LightGBM(TreeEnsemble):
    """LightGBM boosters (values: one regression booster per target on its observed rows;
    classes: a binary or multiclass booster) with early stopping; the score is the booster's
    raw score (binary: the log-odds; multiclass: the class logits)."""

    def __init__(self, feature_dim: int, out_dim: int, params: dict[str, Any], rounds: int) -> None:
        super().__init__(feature_dim, out_dim)
        self.params, self.rounds = params, rounds

    def _train(self, lgb: Any, data: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None,
               params: dict[str, Any], seed: int) -> Any:  # fmt: skip
        """A booster with early stopping on `val`; without one, on a seeded 10% of the rows, then
        refitted on every row with the best number of rounds."""
        x, y = data
        if val is None or len(val[1]) == 0:
            held = np.random.default_rng(seed).permutation(len(y))
            cut = max(1, int(round(HOLDOUT * len(y))))
            probe = self._train(lgb, (x[held[cut:]], y[held[cut:]]), (x[held[:cut]], y[held[:cut]]), params, seed)
            return lgb.train(params, lgb.Dataset(x, y), num_boost_round=max(probe.best_iteration, 1))
        train = lgb.Dataset(x, y)
        booster = lgb.train(params, train, num_boost_round=self.rounds, valid_sets=[lgb.Dataset(val[0], val[1], reference=train)],
                            callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])  # fmt: skip
        return booster

    def fit(self, x: Any, targets: Tensor, task: Any, *, val: Any = None, seed: int = 0) -> dict[str, Any]:
        """Fit on the whole training split, early stopping on `val` (or on held-out rows)."""
        lgb = import_extra("lightgbm", "the lightgbm model")
        features = features_of(x).detach().float().cpu().numpy()
        kind, y, n_classes = solver_problem(task, targets, self.out_dim)
        val_x = features_of(val[0]).detach().float().cpu().numpy() if val is not None else None
        val_y = solver_problem(task, val[1], self.out_dim)[1] if val is not None else None
        params = {**self.params, "seed": seed, "num_threads": _threads(len(features)), "verbose": -1}
        if kind == "classes":
            params.update({"objective": "binary"} if n_classes == 2 else {"objective": "multiclass", "num_class": n_classes})
            booster = self._train(lgb, (features, y), (val_x, val_y) if val is not None else None, params, seed)
            boosters, heads = [booster], (1 if n_classes == 2 else n_classes)
        else:
            params["objective"], boosters, heads = "regression", [], 1
            for k in range(y.shape[1]):
                rows = np.flatnonzero(~np.isnan(y[:, k]))
                val_k = None if val is None else (val_x[~np.isnan(val_y[:, k])], val_y[~np.isnan(val_y[:, k]), k])
                boosters.append(self._train(lgb, (features[rows], y[rows, k]), val_k, params, seed))
        self.load_boosters(boosters, classes=kind == "classes")
        return {"rounds": int(self.roots.shape[0]) // heads // len(boosters)}

    def load_boosters(self, boosters: list[Any], classes: bool) -> None:
        """Take the trees of fitted boosters (up to each one's best iteration): one booster per
        target (values), or one binary / multiclass booster (classes; tree i scores class
        i % num_class)."""
        trees = []
        for k, booster in enumerate(boosters):
            best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
            dump = booster.dump_model(num_iteration=best)
            heads = max(int(dump.get("num_tree_per_iteration", 1)), 1)
            for i, info in enumerate(dump["tree_info"]):
                trees.append(lightgbm_tree(info["tree_structure"], self.out_dim, k + i % heads))
        self._store(trees, LOGITS if classes else VALUES)


def lightgbm(
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    rounds: Annotated[int, Between(1, 100_000)] = 2000,
    learning_rate: Annotated[float, Between(1e-4, 1.0)] = 0.05,
    num_leaves: Annotated[int, Between(2, 131_072)] = 31,
    min_data_in_leaf: Annotated[int, Between(1, 100_000)] = 5,
    feature_fraction: Annotated[float, Between(0.01, 1.0)] = 0.5,
    lambda_l2: Annotated[float, Between(0.0, 1e4)] = 1.0,
) -> nn.Module:
    """Gradient-boosted trees (LightGBM, see `LightGBM`) on fingerprints / descriptors, early
    stopping after 50 rounds without improvement (at most `rounds`)."""
    params = {"learning_rate": learning_rate, "num_leaves": num_leaves, "min_data_in_leaf": min_data_in_leaf,
              "feature_fraction": feature_fraction, "lambda_l2": lambda_l2}  # fmt: skip
    return LightGBM(feature_dim, out_dim, params, rounds)
