"""Run every audit check on loaded, split data; its JSON, verdict lines and report section.

`audit_samples` is what `biomx audit-data` and training share; `write_run_audit` is the hook in
`experiment.train` (RUN/data_audit.json, once per run) and `audit_sections` the report's section."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from biomx.data.samples import Samples
from biomx.data_audit.checks import (
    AuditData,
    Check,
    label_balance,
    missing_labels,
    missing_values,
    target_distribution,
)
from biomx.data_audit.inputs import (
    DEFAULT_NEAR_MAX,
    conflicting_labels,
    exact_duplicates,
    near_duplicates,
    outliers,
    patient_overlap,
)
from biomx.protocols import Modality
from biomx.runs import write_json

if TYPE_CHECKING:
    from biomx.experiment import Prepared

AUDIT_FILE = "data_audit.json"
AUDIT_VERSION = 1
RUN_NEAR_MAX = 10_000  # samples a training run compares for near duplicates (`biomx audit-data`: 20,000)


def _ask(modality: Modality, member: str, samples: Samples, errors: dict[str, str]) -> Any:
    """An optional modality member's answer; None when it lacks the member or fails (the check
    then says "not checked" and why: the audit never stops a run)."""
    fn = getattr(modality, member, None)
    if fn is None:
        return None
    try:
        answer = fn(samples)
        if answer is None:
            errors[member] = f"the modality's {member} gives nothing for this data (e.g. cases read lazily)"
        return answer
    except Exception as err:  # noqa: BLE001  a failing optional member must not stop training
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        errors[member] = f"{member} failed: {first}"
        return None


def audit_samples(modality: Modality, samples: Samples, targets: torch.Tensor | np.ndarray,
                  strata: np.ndarray | None, splits: dict[str, np.ndarray], classes: list[str], *,
                  near_max: int = DEFAULT_NEAR_MAX, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Every check on one dataset; the audit record (JSON-able): checks with their verdict lines,
    counts, example sample numbers and seconds."""
    started = time.perf_counter()
    t = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    data = AuditData(samples, t, strata, splits, list(classes or []))
    timings: dict[str, float] = {}
    for member, attr in (("fingerprints", "fingerprints"), ("describe_sizes", "sizes"),
                         ("missing_values", "missing")):  # fmt: skip
        tick = time.perf_counter()
        setattr(data, attr, _ask(modality, member, samples, data.errors))
        timings[member] = round(time.perf_counter() - tick, 3)
    checks: list[Check] = []
    for check in (label_balance, target_distribution, missing_labels, missing_values, patient_overlap,
                  exact_duplicates, near_duplicates, conflicting_labels, outliers):  # fmt: skip
        tick = time.perf_counter()
        result = check(data, near_max=near_max, seed=seed) if check is near_duplicates else check(data)
        result.seconds = time.perf_counter() - tick
        checks.append(result)
    statuses = [c.status for c in checks]
    return {
        "version": AUDIT_VERSION,
        "modality": getattr(modality, "name", "?"),
        "n": len(t),
        "split_sizes": {k: len(v) for k, v in splits.items()},
        "summary": {s: statuses.count(s) for s in ("ok", "warning", "problem", "not checked")},
        "checks": [c.as_json() for c in checks],
        "modality_seconds": timings,
        "seconds": round(time.perf_counter() - started, 3),
        "note": "sample numbers are 1-based rows of split.csv (sample order); no ids are recorded",
    }


def audit_lines(audit: dict[str, Any]) -> list[str]:
    return [c["line"] for c in audit["checks"]]


def summary_text(audit: dict[str, Any]) -> str:
    s = audit["summary"]
    return (f"data audit: {s['ok']} ok, {s['warning']} warnings, {s['problem']} problems, "
            f"{s['not checked']} not checked ({audit['seconds']:.1f} s)")  # fmt: skip


def audit_prepared(p: Prepared, near_max: int = DEFAULT_NEAR_MAX) -> dict[str, Any]:
    """The audit of a prepared experiment (the strata come from its task type again: cheap)."""
    from biomx.tasks import get_task

    _, strata = get_task(p.cfg.task.kind).targets(p.cfg, p.data)
    return audit_samples(p.modality, p.data, p.targets, strata, p.splits, p.task.classes, near_max=near_max,
                         seed=p.cfg.data.split.seed)  # fmt: skip


def write_run_audit(run_dir: Path, p: Prepared) -> None:
    """RUN/data_audit.json, once per run (a resumed run keeps its own); prints the summary and
    every line that is not ok."""
    from biomx.engine.logging import console

    path = run_dir / AUDIT_FILE
    if path.is_file():
        return
    try:
        audit = audit_prepared(p, near_max=RUN_NEAR_MAX)
    except Exception as err:  # noqa: BLE001  the audit informs; it never stops a training run
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        console.print(f"[yellow]warning: the data audit failed ({type(err).__name__}: {first}); "
                      "run `biomx audit-data CONFIG` to see it[/]")  # fmt: skip
        return
    write_json(path, audit)
    console.print(summary_text(audit) + f"; see {path}")
    for check in audit["checks"]:
        if check["status"] in ("warning", "problem"):
            console.print(f"[yellow]  {check['line']}[/]", highlight=False)


def audit_sections(run_dir: Path) -> list[dict[str, Any]]:
    """The report's "Data audit" section from RUN/data_audit.json (none for a run without it)."""
    import json

    path = run_dir / AUDIT_FILE
    try:
        audit = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    rows = [[c["name"], c["status"], c["message"]] for c in audit.get("checks", [])]
    text = (summary_text(audit) + ". Before training, on the data as split: labels, missing values, patients, "
            "identical and near-identical inputs within and across splits, conflicting labels, outliers. "
            "Sample numbers are rows of split.csv; no ids are shown. See data_audit.json and docs/trust.md.")  # fmt: skip
    return [{"title": "Data audit", "text": text, "table": {"header": ["check", "verdict", "finding"], "rows": rows}}]
