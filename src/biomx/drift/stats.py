"""The two-sample tests drift uses: Kolmogorov-Smirnov (numbers), chi-square (categories), an
MMD permutation test (embeddings), and Holm's correction over all of them.

MMD: the unbiased squared maximum mean discrepancy with an RBF kernel whose bandwidth is the
median pairwise distance of the pooled sample (Gretton et al., JMLR 2012), and a p-value from
label permutations of the pooled kernel matrix (seeded): (1 + #{permuted >= observed}) / (1 + B).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def _mmd2(k: np.ndarray, first: np.ndarray) -> float:
    """Unbiased MMD^2 of a pooled kernel matrix, `first` a boolean mask of the first sample."""
    a, b = first, ~first
    n, m = int(a.sum()), int(b.sum())
    kaa = k[np.ix_(a, a)]
    kbb = k[np.ix_(b, b)]
    kab = k[np.ix_(a, b)]
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())  # fmt: skip


def rbf_kernel(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """The pooled RBF kernel matrix of x and y, and its bandwidth (median pairwise distance)."""
    z = np.concatenate([x, y]).astype(np.float64).reshape(len(x) + len(y), -1)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    upper = d2[np.triu_indices(len(z), k=1)]
    sigma = float(np.sqrt(np.median(upper))) if upper.size else 1.0
    sigma = sigma if sigma > 0 else 1.0  # all points equal: any bandwidth gives MMD 0
    return np.exp(-d2 / (2 * sigma * sigma)), sigma


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 500, seed: int = 0) -> dict[str, Any]:
    """MMD^2 between samples x (n, d) and y (m, d), with its permutation p-value."""
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the MMD test needs at least 2 samples on each side")
    k, sigma = rbf_kernel(x, y)
    first = np.zeros(len(x) + len(y), dtype=bool)
    first[: len(x)] = True
    observed = _mmd2(k, first)
    rng = np.random.default_rng(seed)
    exceed = sum(_mmd2(k, rng.permutation(first)) >= observed for _ in range(permutations))
    return {"statistic": observed, "p_value": (1 + exceed) / (1 + permutations), "bandwidth": sigma,
            "permutations": permutations}  # fmt: skip


def numeric(values: np.ndarray) -> bool:
    """Numbers (KS) rather than categories (chi-square); booleans are categories."""
    return np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.bool_)


def ks_test(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov on the finite values, with both medians."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if not len(x) or not len(y):
        return {"statistic": float("nan"), "p_value": float("nan"), "reference_median": None, "new_median": None}
    result = stats.ks_2samp(x, y)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue),
            "reference_median": float(np.median(x)), "new_median": float(np.median(y))}  # fmt: skip


def chi2_test(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Chi-square test of homogeneity of two samples' category counts (p = 1 for one category)."""
    x = np.asarray([str(v) for v in x])
    y = np.asarray([str(v) for v in y])
    levels = sorted(set(x.tolist()) | set(y.tolist()))
    table = np.array([[int(np.sum(x == v)) for v in levels], [int(np.sum(y == v)) for v in levels]])
    shares = {"reference": dict(zip(levels, (table[0] / max(len(x), 1)).round(4).tolist(), strict=True)),
              "new": dict(zip(levels, (table[1] / max(len(y), 1)).round(4).tolist(), strict=True))}  # fmt: skip
    if len(levels) < 2 or not len(x) or not len(y):
        return {"statistic": 0.0, "p_value": 1.0, "shares": shares}
    statistic, p, _, _ = stats.chi2_contingency(table)
    return {"statistic": float(statistic), "p_value": float(p), "shares": shares}


def two_sample(x: np.ndarray, y: np.ndarray) -> tuple[str, dict[str, Any]]:
    """(test name, result): KS for numbers, chi-square for categories."""
    x, y = np.asarray(x), np.asarray(y)
    if numeric(x) and numeric(y):
        return "Kolmogorov-Smirnov", ks_test(x, y)
    return "chi-square", chi2_test(x, y)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), np.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
