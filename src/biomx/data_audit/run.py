"""`biomx audit-data CONFIG`: read and split the data as `experiment.prepare` does (no datasets,
no model, nothing trained), run the audit, print its verdict lines and write its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biomx.config import ExperimentConfig
from biomx.data_audit.audit import audit_samples
from biomx.data_audit.inputs import DEFAULT_NEAR_MAX
from biomx.errors import BiomxError
from biomx.experiment import check_config, make_splits
from biomx.runs import write_json


def audit_config(cfg: ExperimentConfig, near_max: int = DEFAULT_NEAR_MAX) -> dict[str, Any]:
    """The audit of the data a config reads, split as training would split it.

    Raises:
        BiomxError: the config or the data, as one line (as `biomx train` would say it).
    """
    modality, task_type = check_config(cfg)
    data = task_type.load(cfg, modality)
    if len(data.labels) == 0:
        raise BiomxError(f"{cfg.data.path}: no readable samples")
    targets, strata = task_type.targets(cfg, data)
    splits = make_splits(cfg, modality, data, strata)
    task = task_type.build(cfg, data, targets, splits["train"])  # class names (fitted on train, as training)
    audit = audit_samples(modality, data, targets, strata, splits, task.classes, near_max=near_max,
                          seed=cfg.data.split.seed)  # fmt: skip
    return {"name": cfg.name, "source": cfg.data.source, "path": str(cfg.data.path), **audit}


def default_output(cfg: ExperimentConfig) -> Path:
    """Where the JSON goes without --out: beside the runs, <output.dir>/data_audit-<name>.json."""
    return Path(cfg.output.dir) / f"data_audit-{cfg.name}.json"


def run_audit(config: str, overrides: list[str], out: str | None, near_max: int) -> tuple[dict[str, Any], Path]:
    """(the audit, the JSON file written) for `biomx audit-data`."""
    from biomx.config import load_config

    cfg = load_config(config, overrides)
    audit = audit_config(cfg, near_max=near_max)
    path = Path(out) if out else default_output(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, audit)
    return audit, path
