"""The audit's record types and the checks of the labels: their balance or distribution per split,
and missing labels. Each check returns a `Check` whose `line()` is its one-line verdict.

Sample numbers in messages and JSON are 1-based rows of the run's split.csv (sample order), never
ids or patient identifiers (file names and patient ids may identify a person)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints

MAX_EXAMPLES = 3  # sample numbers shown per finding
MINORITY = 0.10  # a class under this share of the training split is called imbalanced
PROPORTION_GAP = 0.10  # a class whose share differs by more than this from train's: a shift
SHIFT_SD = 0.5  # a split whose target mean is this many training SDs from train's: a shift
MAX_SHOWN = 4  # classes or columns spelled out in a message


@dataclass
class Check:
    """One check's verdict: status is ok, warning, problem or "not checked"."""

    name: str
    status: str
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.name}: {self.status}" + (f": {self.message}" if self.message else "")

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "line": self.line(),
                "seconds": round(self.seconds, 3), "details": self.details}  # fmt: skip


@dataclass
class AuditData:
    """What the checks read: `prepare`'s samples, targets and splits, and what the modality said."""

    samples: Samples
    targets: np.ndarray  # as the task encodes them: (N,) or (N, K)
    strata: np.ndarray | None  # the labels the split stratifies by (classes, an event flag), or None
    splits: dict[str, np.ndarray]
    classes: list[str]
    fingerprints: Fingerprints | None = None
    sizes: dict[str, np.ndarray] | None = None
    missing: dict[str, int] | None = None
    errors: dict[str, str] = field(default_factory=dict)  # modality member -> why it gave nothing

    def split_of(self) -> np.ndarray:
        """The split name of every sample ("" for a sample in none)."""
        names = np.full(len(self.targets), "", dtype=object)
        for name, idx in self.splits.items():
            names[idx] = name
        return names

    def label_rows(self) -> list[bytes] | None:
        """A comparable label per sample (NaN equal to NaN), or None when the targets are not
        per-sample labels or values (e.g. case numbers of a dense task)."""
        if self.strata is None and not np.issubdtype(self.targets.dtype, np.floating):
            return None
        rows = self.targets.reshape(len(self.targets), -1).astype(np.float64)
        rows = np.where(np.isnan(rows), np.inf, rows)
        return [row.tobytes() for row in rows]


def examples(indices: Any) -> str:
    """"samples 3, 17, 245" (1-based), at most MAX_EXAMPLES."""
    shown = sorted(int(i) + 1 for i in list(indices)[:MAX_EXAMPLES])
    return ("sample " if len(shown) == 1 else "samples ") + ", ".join(map(str, shown)) if shown else ""


def sample_numbers(indices: Any, limit: int = 20) -> list[int]:
    return [int(i) + 1 for i in list(indices)[:limit]]


def _stratum_names(data: AuditData, values: np.ndarray) -> list[str]:
    """Class names when the strata are the class targets themselves, else the stratum values."""
    named = class_targets(data)
    return [data.classes[int(v)] if named and 0 <= int(v) < len(data.classes) else f"{v:g}" for v in values]


def class_targets(data: AuditData) -> bool:
    """Whether the targets are the strata themselves: one class index per sample."""
    t = data.targets
    return data.strata is not None and t.ndim == 1 and np.array_equal(t, data.strata)


def label_balance(data: AuditData) -> Check:
    """Counts and shares of each class (or stratum) per split: imbalance, a class missing from a
    split, and shares that differ between splits."""
    name = "label balance"
    if data.strata is None or data.strata.ndim != 1:
        return Check(name, "not checked", "the task does not stratify by one label per sample")
    values = np.unique(data.strata)
    names = _stratum_names(data, values)
    counts = {split: {n: int((data.strata[idx] == v).sum()) for n, v in zip(names, values, strict=True)}
              for split, idx in data.splits.items() if len(idx)}  # fmt: skip
    train = counts.get("train", next(iter(counts.values())))
    total = max(1, sum(train.values()))
    findings = []
    low = [n for n, c in train.items() if c / total < MINORITY]
    if low:
        findings.append(f"imbalanced: {', '.join(low[:MAX_SHOWN])} under {MINORITY:.0%} of train")
    for split, row in counts.items():
        size = max(1, sum(row.values()))
        absent = [n for n, c in row.items() if c == 0 and train.get(n, 0) > 0]
        if absent:
            findings.append(f"{split} has no {', '.join(absent[:MAX_SHOWN])}")
        gaps = [n for n, c in row.items() if abs(c / size - train.get(n, 0) / total) > PROPORTION_GAP]
        if split != "train" and gaps:
            findings.append(f"{split} shares differ from train's by over {PROPORTION_GAP:.0%} ({', '.join(gaps[:MAX_SHOWN])})")
    shares = "; ".join(f"{split}: " + ", ".join(f"{n} {c} ({c / max(1, sum(row.values())):.0%})"
                                                 for n, c in list(row.items())[:MAX_SHOWN])
                       for split, row in counts.items())  # fmt: skip
    if len(names) > MAX_SHOWN:
        shares += f" (first {MAX_SHOWN} of {len(names)} labels)"
    status = "warning" if findings else "ok"
    return Check(name, status, "; ".join([*findings, shares]), {"counts": counts})


def _column_names(data: AuditData, width: int) -> list[str]:
    for names in (data.samples.label_columns, data.classes):
        if names and len(names) == width:
            return [str(n) for n in names]
    return ["target"] if width == 1 else [f"target {k + 1}" for k in range(width)]


def target_distribution(data: AuditData) -> Check:
    """Mean, SD and range of each target column per split; a split whose mean sits far from
    train's (in training SDs) is a shift (e.g. a structure-based split, a changed population)."""
    name = "target distribution"
    t = data.targets
    if class_targets(data) or not np.issubdtype(t.dtype, np.floating):
        return Check(name, "not checked", "the targets are class labels (see label balance)"
                     if data.strata is not None else "the targets are not per-sample values")  # fmt: skip
    rows = t.reshape(len(t), -1).astype(np.float64)
    columns = _column_names(data, rows.shape[1])
    stats: dict[str, dict[str, dict[str, float]]] = {}
    findings, shown = [], []
    for k, column in enumerate(columns):
        stats[column] = {}
        for split, idx in data.splits.items():
            x = rows[idx, k][np.isfinite(rows[idx, k])]
            if len(x):
                stats[column][split] = {"n": len(x), "mean": float(x.mean()), "sd": float(x.std()),
                                        "min": float(x.min()), "median": float(np.median(x)), "max": float(x.max())}  # fmt: skip
        train = stats[column].get("train")
        if train is None:
            continue
        for split, s in stats[column].items():
            off = abs(s["mean"] - train["mean"]) / train["sd"] if train["sd"] > 0 else 0.0
            if split != "train" and off > SHIFT_SD:
                findings.append(f"{column}: {split} mean {s['mean']:.3g} is {off:.1f} training SDs from train's")
        if k < MAX_SHOWN:
            shown.append(f"{column}: " + ", ".join(f"{split} {s['mean']:.3g} (sd {s['sd']:.3g})"
                                                   for split, s in stats[column].items()))  # fmt: skip
    if len(columns) > MAX_SHOWN:
        shown.append(f"... {len(columns)} columns in all")
    return Check(name, "warning" if findings else "ok", "; ".join([*findings, *shown]), {"columns": stats})


def missing_labels(data: AuditData) -> Check:
    """Missing target cells (NaN) per column; a column missing in most samples, or in a whole
    split, is a warning (that split cannot score it)."""
    name = "missing labels"
    t = data.targets
    if class_targets(data) or not np.issubdtype(t.dtype, np.floating):
        if data.strata is None:
            return Check(name, "not checked", "the targets are not per-sample labels")
        return Check(name, "ok", "none (every sample has a class label)")
    rows = t.reshape(len(t), -1)
    columns = _column_names(data, rows.shape[1])
    missing = np.isnan(rows)
    counts = {c: int(missing[:, k].sum()) for k, c in enumerate(columns)}
    if not any(counts.values()):
        return Check(name, "ok", "none", {"counts": counts})
    findings = [f"{c}: most samples have no label" for c, n in counts.items() if n > len(t) / 2]
    for split, idx in data.splits.items():
        empty = [c for k, c in enumerate(columns) if len(idx) and missing[idx, k].all()]
        findings += [f"{split} has no {c} label" for c in empty[:MAX_SHOWN]]
    total = sum(counts.values())
    worst = sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_SHOWN]
    message = f"{total} of {missing.size} target cells missing ({', '.join(f'{c}: {n}' for c, n in worst)})"
    return Check(name, "warning" if findings else "ok", "; ".join([*findings, message]), {"counts": counts})


def missing_values(data: AuditData) -> Check:
    """Missing input values per field, as the modality counts them (e.g. empty table cells)."""
    name = "missing values"
    if data.missing is None:
        why = data.errors.get("missing_values", "the modality does not report missing input values")
        return Check(name, "not checked", why)
    counts = {k: int(v) for k, v in data.missing.items() if v}
    if not counts:
        return Check(name, "ok", "none", {"counts": {}})
    n = len(data.targets)
    mostly = [k for k, v in counts.items() if v > n / 2]
    worst = sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_SHOWN]
    message = (f"{sum(counts.values())} missing in {len(counts)} fields ("
               + ", ".join(f"{k}: {v} ({v / max(1, n):.0%})" for k, v in worst) + ")")  # fmt: skip
    if mostly:
        message = f"{', '.join(mostly[:MAX_SHOWN])} missing in most samples; " + message
    return Check(name, "warning" if mostly else "ok", message, {"counts": counts})
