"""The audit's checks of the inputs: patient overlap, exact and near duplicates within and across
splits, conflicting labels for identical inputs, and outliers in what the modality measures."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from biomx.data.splits import shared_groups
from biomx.data_audit.checks import (
    MAX_SHOWN,
    AuditData,
    Check,
    class_targets,
    examples,
    sample_numbers,
)
from biomx.data_audit.near import near_pairs

OUTLIER_Z = 6.0  # robust z-score, |x - median| / (1.4826 MAD), beyond which a value is an outlier
# (of log(1 + x) for a measure that is never negative)
DISCRETE_SHARE = 0.01  # a measure with MAD 0: values off the median count only if this rare
DEFAULT_NEAR_MAX = 20_000  # samples compared for near duplicates (a seeded sample of larger data)


def patient_overlap(data: AuditData) -> Check:
    """Patients (group column) with samples in more than one split: leakage."""
    name = "patient overlap"
    groups = data.samples.groups
    if groups is None:
        return Check(name, "not checked", "no patient (group) column")
    leaked = shared_groups(groups, data.splits)
    n_groups = len({g for g in groups.tolist() if g not in (None, "")})
    if not leaked:
        return Check(name, "ok", f"{n_groups} patients, none in two splits", {"patients": n_groups})
    rows = np.flatnonzero(np.isin(groups.astype(str), np.array([str(g) for g in leaked])))
    message = (f"{len(leaked)} of {n_groups} patients have samples in more than one split "
               f"({len(rows)} samples, e.g. {examples(rows)}); use data.split.method: group")  # fmt: skip
    return Check(name, "problem", message, {"patients": n_groups, "leaked_patients": len(leaked),
                                            "samples": sample_numbers(rows)})  # fmt: skip


def _key_groups(data: AuditData) -> dict[str, list[int]]:
    """Exact key -> samples (in a split) holding it, for keys held by more than one sample."""
    split_of = data.split_of()
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(data.fingerprints.exact):
        if key is not None and split_of[i]:
            groups[key].append(i)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _not_fingerprinted(data: AuditData, name: str) -> Check:
    why = data.errors.get("fingerprints", "the modality gives no fingerprints of its inputs")
    return Check(name, "not checked", why)


def exact_duplicates(data: AuditData) -> Check:
    """Identical inputs (equal exact keys) across splits (leakage: a problem) and within one."""
    name = "exact duplicates"
    if data.fingerprints is None:
        return _not_fingerprinted(data, name)
    split_of = data.split_of()
    across: dict[str, list[int]] = defaultdict(list)  # "test/train" -> samples of the first split
    pairs: dict[str, list[list[int]]] = defaultdict(list)  # "test/train" -> [a test sample, its train copy]
    within: dict[str, int] = defaultdict(int)  # split -> extra copies
    for rows in _key_groups(data).values():
        by_split: dict[str, list[int]] = defaultdict(list)
        for i in rows:
            by_split[split_of[i]].append(i)
        for split, members in by_split.items():
            within[split] += len(members) - 1
        order = [s for s in data.splits if s in by_split]
        for a, first in enumerate(order):
            for second in order[:a]:  # later split against each earlier one (test against train)
                across[f"{first}/{second}"].extend(by_split[first])
                pairs[f"{first}/{second}"].append(sample_numbers([by_split[first][0], by_split[second][0]]))
    found = []
    for pair, rows in across.items():
        size = len(data.splits[pair.split("/")[0]])
        found.append(f"{pair}: {len(rows)} of {size} {pair.split('/')[0]} samples (e.g. {examples(sorted(rows))})")
    copies = [f"{split}: {n} extra copies" for split, n in within.items() if n]
    details = {"method": data.fingerprints.method, "across": {k: sample_numbers(sorted(v)) for k, v in across.items()},
               "pairs": {k: v[:20] for k, v in pairs.items()},
               "across_counts": {k: len(v) for k, v in across.items()}, "within_copies": dict(within)}  # fmt: skip
    if across:
        return Check(name, "problem", "identical inputs in two splits: " + "; ".join(found + copies), details)
    if copies:
        return Check(name, "warning", "within a split: " + "; ".join(copies), details)
    return Check(name, "ok", f"none ({data.fingerprints.method})", details)


def conflicting_labels(data: AuditData) -> Check:
    """Identical inputs (equal exact keys) whose labels differ."""
    name = "conflicting labels"
    if data.fingerprints is None:
        return _not_fingerprinted(data, name)
    labels = data.label_rows()
    if labels is None:
        return Check(name, "not checked", "the targets are not per-sample labels")
    conflicts = [rows for rows in _key_groups(data).values() if len({labels[i] for i in rows}) > 1]
    if not conflicts:
        return Check(name, "ok", "none", {"inputs": 0})
    rows = [i for group in conflicts for i in group]
    message = (f"{len(conflicts)} inputs occur with different labels ({len(rows)} samples, e.g. "
               f"{examples(rows)})")  # fmt: skip
    return Check(name, "warning", message, {"inputs": len(conflicts), "samples": sample_numbers(rows)})


def _capped(data: AuditData, near_max: int, seed: int) -> tuple[dict[str, np.ndarray], int]:
    """Each split's rows, sampled in proportion (seeded) when all of them exceed `near_max`."""
    total = sum(len(v) for v in data.splits.values())
    if total <= near_max:
        return dict(data.splits), total
    rng = np.random.default_rng(seed)
    kept = {k: np.sort(rng.choice(v, max(1, int(len(v) * near_max / total)), replace=False)) if len(v) else v
            for k, v in data.splits.items()}  # fmt: skip
    return kept, total


def near_duplicates(data: AuditData, near_max: int = DEFAULT_NEAR_MAX, seed: int = 0) -> Check:
    """Near-duplicate inputs (by the modality's near vectors, identical ones excluded): each later
    split against every earlier one (val and test against train: leakage), and within train."""
    name = "near duplicates"
    fp = data.fingerprints
    if fp is None or fp.near is None:
        return _not_fingerprinted(data, name) if fp is None else Check(name, "not checked", "the modality gives "
                                                                       "no near-duplicate vectors")  # fmt: skip
    splits, total = _capped(data, near_max, seed)
    names = [s for s in splits if len(splits[s])]
    labels = data.label_rows() if class_targets(data) else None  # values (regression) differ anyway
    counts, found, details = {}, [], {"method": fp.near.method, "compared": sum(len(v) for v in splits.values()),
                                      "of": total, "pairs": {}, "samples": {}}  # fmt: skip
    for a, first in enumerate(names):
        for second in [*names[:a], *([first] if first == "train" else [])]:
            found_pairs = near_pairs(fp.near, splits[first], None if second == first else splits[second], fp.exact)
            key = f"{first}/{second}" if second != first else f"within {first}"
            counts[key] = found_pairs.count
            details["pairs"][key] = found_pairs.count
            details["samples"][key] = sample_numbers(found_pairs.pairs.reshape(-1), 20)
            if found_pairs.count:
                differ = sum(labels[i] != labels[j] for i, j in found_pairs.pairs) if labels is not None else 0
                text = (f"{key}: {len(found_pairs.matched_a)} of {len(splits[first])} {first} samples "
                        f"({found_pairs.count} pairs, e.g. {examples(found_pairs.pairs[0])}")  # fmt: skip
                found.append(text + (f"; {differ} of them with different classes)" if differ else ")"))
    capped = f"; compared a seeded sample of {details['compared']} of {total}" if details["compared"] < total else ""
    across = [f for f in found if not f.startswith("within")]
    status = "warning" if across else "ok"
    message = "; ".join(found) if found else "none"
    return Check(name, status, f"{message} ({fp.near.method}{capped})", details)


def _outliers(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Rows of `x` that are outliers, and the median. A measure that is never negative (sizes,
    counts, concentrations: often right-skewed) is judged on the scale of log(1 + x)."""
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(0, dtype=np.int64), float("nan")
    med = float(np.median(x[finite]))
    scaled = np.log1p(np.where(finite, x, 0)) if x[finite].min() >= 0 else x
    centre = float(np.median(scaled[finite]))
    mad = float(np.median(np.abs(scaled[finite] - centre))) * 1.4826
    if mad > 0:
        return np.flatnonzero(finite & (np.abs(scaled - centre) > OUTLIER_Z * mad)), med
    off = np.flatnonzero(finite & (x != med))
    return (off if len(off) <= DISCRETE_SHARE * finite.sum() else np.zeros(0, dtype=np.int64)), med


def outliers(data: AuditData) -> Check:
    """Samples far from the rest in any measure the modality takes (size, intensity, length):
    beyond OUTLIER_Z robust SDs of the median, or rare values of a measure that is nearly constant."""
    name = "outliers"
    if data.sizes is None:
        why = data.errors.get("describe_sizes", "the modality gives no size or intensity measures")
        return Check(name, "not checked", why)
    flagged, per_measure, medians = set(), {}, {}
    for measure, values in data.sizes.items():
        rows, medians[measure] = _outliers(np.asarray(values, dtype=np.float64))
        if len(rows):
            per_measure[measure] = {"count": len(rows), "samples": sample_numbers(rows),
                                    "values": [float(values[i]) for i in rows[:5]]}  # fmt: skip
            flagged.update(rows.tolist())
    details = {"measures": list(data.sizes), "medians": medians, "outliers": per_measure, "robust_z": OUTLIER_Z,
               "scale": "log(1 + x) for measures that are never negative"}
    if not flagged:
        return Check(name, "ok", f"none beyond {OUTLIER_Z:g} robust SDs in {', '.join(list(data.sizes)[:6])}", details)
    shown = sorted(per_measure.items(), key=lambda kv: -kv[1]["count"])[:MAX_SHOWN]
    text = ", ".join(f"{m}: {d['count']} (median {medians[m]:.3g}, e.g. {examples(np.array(d['samples']) - 1)} "
                     f"at {', '.join(f'{v:.3g}' for v in d['values'][:2])})" for m, d in shown)  # fmt: skip
    return Check(name, "warning", f"{len(flagged)} samples far from the rest ({text})", details)
