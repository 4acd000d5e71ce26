"""Train / validation / test splits: random, stratified and grouped (by patient), seeded."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, train_test_split

from biomx.engine.logging import console
from biomx.errors import ConfigError


def _stratify_on(labels: np.ndarray | None, n_holdout: int, n_rest: int) -> np.ndarray | None:
    """Labels to stratify on, or None when stratification is impossible (then random)."""
    if labels is None or labels.ndim != 1:
        return None  # multilabel: no simple stratification; fall back to random
    _, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2 or n_holdout < len(counts) or n_rest < len(counts):
        console.print("[yellow]warning: a class is too rare to stratify; splitting at random[/]")
        return None
    return labels


def _holdout(
    index: np.ndarray, fraction: float, method: str, labels: np.ndarray | None,
    groups: np.ndarray | None, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split `index` into (rest, holdout) with `fraction` of it held out."""
    if fraction <= 0:
        return index, index[:0]
    n_holdout = int(round(fraction * len(index)))
    if n_holdout < 1 or n_holdout >= len(index):
        raise ConfigError(f"data.split: a fraction of {fraction} of {len(index)} samples leaves an empty split")
    if method == "group":
        if groups is None:
            raise ConfigError("data.split.method: 'group' needs patient ids (a group_column in the CSV manifest)")
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        rest, hold = next(splitter.split(index, groups=groups[index]))
        return index[rest], index[hold]
    strat = None
    if method in ("stratified", "predefined") and labels is not None:
        strat = _stratify_on(labels[index], n_holdout, len(index) - n_holdout)
    rest, hold = train_test_split(index, test_size=n_holdout, random_state=seed, stratify=strat)
    return np.sort(rest), np.sort(hold)


def split_indices(
    n: int,
    *,
    method: str = "stratified",
    val: float = 0.1,
    test: float = 0.15,
    seed: int = 0,
    labels: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Assign each of `n` samples to train, val or test.

    Args:
        method: "random", "stratified" (keeps class proportions) or "group" (no patient in
            two splits).
        val, test: fractions of all samples.
        labels: (n,) class indices for stratification.
        groups: (n,) patient ids for grouped splits.

    Returns:
        {"train": idx, "val": idx, "test": idx}, sorted index arrays.

    Raises:
        ConfigError: fractions that leave a split empty, or a group split without groups.
    """
    if val + test >= 1.0:
        raise ConfigError(f"data.split: val + test must be < 1 (got {val} + {test})")
    everything = np.arange(n)
    rest, test_idx = _holdout(everything, test, method, labels, groups, seed)
    train_idx, val_idx = _holdout(rest, val / (1.0 - test), method, labels, groups, seed + 1)
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def shared_groups(groups: np.ndarray | None, splits: dict[str, np.ndarray]) -> set:
    """Patient ids that appear in more than one split (data leakage)."""
    if groups is None:
        return set()
    seen: dict = {}
    leaked = set()
    for name, idx in splits.items():
        for g in set(groups[idx].tolist()):
            if g is None or g == "":
                continue
            if g in seen and seen[g] != name:
                leaked.add(g)
            seen.setdefault(g, name)
    return leaked


def warn_if_leaking(groups: np.ndarray | None, splits: dict[str, np.ndarray]) -> int:
    """Print a loud warning if a patient appears in two splits; return how many do."""
    leaked = shared_groups(groups, splits)
    if leaked:
        # Never print the ids themselves: they may identify patients.
        console.print(
            f"[bold red]WARNING: {len(leaked)} patients have images in more than one split; "
            f"test metrics will be optimistic. Use data.split.method: group[/]"
        )
    return len(leaked)


def row_digests(rows) -> list[str]:
    """A content digest of each row of a tensor or array (N, ...): equal rows, equal digests.

    Hashes each row's bytes (BLAKE2b), 1024 rows at a time in threads (hashlib releases the GIL
    on large buffers); no copy is made of a contiguous CPU tensor."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    import torch

    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().contiguous()
        if rows.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the same bits
            rows = rows.view(torch.int16)
        rows = rows.numpy()
    rows = np.ascontiguousarray(rows)
    tag = f"{rows.dtype.str}{rows.shape[1:]}".encode()

    def chunk_digests(start: int) -> list[str]:
        part = rows[start:start + 1024].reshape(len(rows[start:start + 1024]), -1)
        return [hashlib.blake2b(tag + row.tobytes(), digest_size=16).hexdigest() for row in part]

    with ThreadPoolExecutor(8) as pool:
        return [d for part in pool.map(chunk_digests, range(0, len(rows), 1024)) for d in part]


def _splits_of_contents(digests: list[str | None], splits: dict[str, np.ndarray]) -> list[list[str]]:
    """For each distinct content (digest) in more than one split: its splits, in split order."""
    where: dict[str, list[str]] = {}
    for name, idx in splits.items():
        for i in idx.tolist():
            d = digests[i]
            if d is not None and name not in where.setdefault(d, []):
                where[d].append(name)
    return [names for names in where.values() if len(names) > 1]


def shared_contents(digests: list[str | None], splits: dict[str, np.ndarray]) -> dict[tuple[str, str], int]:
    """How many distinct contents (equal digests) occur in each pair of splits, e.g.
    {("train", "test"): 3}; a content in three splits counts in each of their pairs. Samples
    with a digest of None are not compared."""
    pairs: dict[tuple[str, str], int] = {}
    for names in _splits_of_contents(digests, splits):
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                pairs[(names[a], names[b])] = pairs.get((names[a], names[b]), 0) + 1
    return pairs


def warn_if_duplicated(digests: list[str | None] | None, splits: dict[str, np.ndarray]) -> int:
    """Warn if identical inputs (by content) sit in more than one split; return how many
    distinct contents do. Only counts are printed, never ids (they may identify patients)."""
    if digests is None:
        return 0
    n = len(_splits_of_contents(digests, splits))
    if n:
        order = {name: k for k, name in enumerate(splits)}
        pairs = sorted(shared_contents(digests, splits).items(), key=lambda kv: (order[kv[0][0]], order[kv[0][1]]))
        detail = ", ".join(f"{a}/{b}: {count}" for (a, b), count in pairs)
        console.print(f"[yellow]warning: {n} distinct inputs occur with identical content in more than one split "
                      f"({detail}); test metrics will be optimistic. Remove the duplicates from the source[/]")
    return n


def predefined_splits(split_cfg, predefined: dict[str, np.ndarray] | None,
                      labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """The source's own train/val/test, with missing splits carved (stratified) out of train."""
    s = split_cfg
    if not predefined or "train" not in predefined:
        raise ConfigError("data.split.method: 'predefined' needs an npz with train_/val_ arrays, "
                          f"or a CSV column {s.column!r} of train/val/test")  # fmt: skip
    train, val, test = predefined["train"], predefined.get("val"), predefined.get("test")
    if s.holdout == "val":  # the official val split is the untouched test set
        if val is None:
            raise ConfigError("data.split.holdout: 'val' needs a val split in the source")
        val, test = None, val
    rest = train
    if test is None and s.test > 0:  # carve a stratified test split out of train
        part = split_indices(len(train), method="stratified", val=0.0, test=s.test, seed=s.seed,
                             labels=None if labels is None else labels[train])  # fmt: skip
        rest, test = train[part["train"]], train[part["test"]]
    if val is None and s.val > 0:
        part = split_indices(len(rest), method="stratified", val=0.0, test=s.val, seed=s.seed + 1,
                             labels=None if labels is None else labels[rest])  # fmt: skip
        rest, val = rest[part["train"]], rest[part["test"]]
    empty = np.zeros(0, dtype=np.int64)
    return {"train": rest, "val": empty if val is None else val, "test": empty if test is None else test}
