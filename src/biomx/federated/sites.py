"""Which training and validation rows each site holds.

With `sites: N` every site reads the same experiment and keeps a part of its training and
validation splits, cut by a non-random rule so that sites differ as hospitals do; the test split
is not cut: it is the shared test split the global model is scored on.

- `label_skew`: the rows of each label, in file order, are dealt to the sites in contiguous
  runs whose sizes are proportional to `1 + skew * (1 - 2 |t_k - u_c|)`, where t_k = k/(N-1)
  places site k and u_c = c/(C-1) places label c among the sorted labels. With two labels and
  skew 0.8, site 1 gets 60% of the first label and 7% of the second, site N the reverse: the
  first site is mostly the first label, the last mostly the second. Any task works (the labels
  are only sorted), a regression's values too.
- `contiguous`: N equal runs of rows in file order (sites as batches of acquisition).

With a list of sites, each site reads its own data (its overrides) and trains on all its rows.
"""

from __future__ import annotations

import numpy as np

from biomx.federated.config import FederatedConfig


def _label_keys(labels: list) -> np.ndarray:
    """A sortable key per row ("a|b" for a row with several labels)."""
    return np.array(["|".join(map(str, x)) if isinstance(x, list) else str(x) for x in labels], dtype=object)


def skew_weights(n_sites: int, n_labels: int, skew: float) -> np.ndarray:
    """(n_labels, n_sites): the share of each label's rows that goes to each site (rows sum to 1)."""
    t = np.linspace(0.0, 1.0, n_sites)
    u = np.linspace(0.0, 1.0, n_labels) if n_labels > 1 else np.zeros(1)
    w = 1.0 + skew * (1.0 - 2.0 * np.abs(u[:, None] - t[None, :]))
    return w / w.sum(axis=1, keepdims=True)


def partition(rows: np.ndarray, labels: list, n_sites: int, rule: str, skew: float) -> list[np.ndarray]:
    """`rows` (indices into `labels`) cut into `n_sites` sorted index arrays by `rule`."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if rule == "contiguous":
        return [np.asarray(part, dtype=np.int64) for part in np.array_split(rows, n_sites)]
    keys = _label_keys(labels)[rows] if len(rows) else np.array([], dtype=object)
    values = sorted(set(keys.tolist()))
    shares = skew_weights(n_sites, len(values), skew)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
    for c, value in enumerate(values):
        mine = rows[keys == value]
        cuts = np.round(np.cumsum(shares[c]) * len(mine)).astype(int)
        for k, chunk in enumerate(np.split(mine, cuts[:-1])):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) if p else np.array([], dtype=np.int64) for p in parts]


def site_rows(fed: FederatedConfig, splits: dict[str, np.ndarray], labels: list, site: int) -> dict[str, np.ndarray]:
    """Site `site`'s (0-based) "train" and "val" rows of an experiment's splits."""
    if not isinstance(fed.sites, int):
        return {name: splits[name] for name in ("train", "val")}
    rule, skew = fed.partition.rule, fed.partition.skew
    return {name: partition(splits[name], labels, fed.sites, rule, skew)[site] for name in ("train", "val")}
