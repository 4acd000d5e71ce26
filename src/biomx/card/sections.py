"""The sections of a model card (Mitchell et al. 2019), each drawn from a run's own files.

A section is `{"key", "title", "text": [paragraphs], "facts": {name: value}, "tables": [{"title",
"header", "rows"}]}` (and "items", a bulleted list, for the caveats); `biomx.card.write` renders it as Markdown and keeps it as JSON. What a run
does not have is said, never left out: "Not stated: set output.intended_use", "not evaluated".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomx.card.facts import describe_json, is_metric, metric_text, number, show

SMALL_TEST = 100  # fewer test samples: the card says the intervals are wide
WIDE_CI = 0.2  # a headline interval at least this wide is named
MISCALIBRATED = 0.1  # an expected calibration error (or mean gap) above this is named
FEW_OF_A_CLASS = 10  # fewer test samples of a class: its per-class numbers are named as unreliable


@dataclass
class RunFacts:
    """What the card reads from one run directory (absent files are None)."""

    run_dir: Path
    info: dict[str, Any]  # run.json
    config: dict[str, Any]  # config.yaml as plain YAML (no validation needed to describe it)
    data: dict[str, Any]  # data.json
    evaluation: dict[str, Any] | None  # test_metrics.json
    counts: dict[str, dict[str, int]]  # split -> label -> count (from split.csv; {} when not countable)
    sizes: dict[str, int]  # split -> samples
    privacy: Any = None  # privacy.json
    operating_point: Any = None  # operating_point.json
    subgroups: Any = None  # subgroups.json
    audit: Any = None  # data_audit.json (`biomx audit-data`, written before training)
    environment: dict[str, Any] = field(default_factory=dict)
    environment_note: str = ""
    model: dict[str, Any] = field(default_factory=dict)  # architecture, parameters, ... (write.py fills it)
    provenance: dict[str, str] = field(default_factory=dict)  # from the modality (DescribesData), if any
    inputs: str = ""  # what the model takes, from the modality's export plan when it has one
    epochs_run: int | None = None

    def cfg(self, *keys: str) -> Any:
        value: Any = self.config
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value


def make_section(key: str, title: str, text: list[str] | None = None, facts: dict[str, Any] | None = None,
                 tables: list[dict[str, Any]] | None = None, items: list[str] | None = None) -> dict[str, Any]:
    """A card section; `items` are a bulleted list (the caveats)."""
    section = {"key": key, "title": title, "text": [t for t in text or [] if t], "facts": facts or {},
               "tables": tables or []}  # fmt: skip
    if items is not None:
        section["items"] = items
    return section


def data_name(run: RunFacts) -> str:
    """The data's folder or file name (or an embedded dataset's name): never a full path."""
    path = run.data.get("path") or run.cfg("data", "path")
    return Path(str(path)).name if path else "not recorded"


def model_details(run: RunFacts) -> dict[str, Any]:
    train = run.cfg("train") or {}
    optimizer = train.get("optimizer") or {}
    facts = {
        "name": run.info.get("name") or run.cfg("name"),
        "run": run.run_dir.name,
        "trained with biomx": run.info.get("biomx_version", "not recorded"),
        **run.model,
        "licence": "not stated (set by whoever releases the model; the data's licence is under Training data)",
        "training": (f"{run.epochs_run if run.epochs_run is not None else '?'} of {train.get('epochs')} epochs, "
                     f"batch {train.get('batch_size')}, {optimizer.get('name')} lr {optimizer.get('lr')}, "
                     f"schedule {(train.get('schedule') or {}).get('name')}, precision {train.get('precision')}, "
                     f"seed {train.get('seed')}, best checkpoint by {train.get('monitor')}"),
        "early stopping": train.get("early_stopping") or "off",
        "differential privacy": "yes (see Ethical considerations)" if run.privacy else "no",
    }  # fmt: skip
    task = run.info.get("task") or {}
    text = [f"Modality {run.info.get('modality')}, task {task.get('name')} ({task.get('kind')}); trained with "
            f"biomx on {data_name(run)}."]  # fmt: skip
    return make_section("model_details", "Model details", text, facts)


def intended_use(run: RunFacts) -> dict[str, Any]:
    use, out = run.cfg("output", "intended_use"), run.cfg("output", "out_of_scope")
    facts = {
        "intended use": use or "Not stated: set output.intended_use in the config",
        "out-of-scope uses": out or "Not stated: set output.out_of_scope in the config",
    }
    text = ["Whoever trains the model states its use; biomx does not guess it. Without a statement, treat "
            "the model as a research result, not as a tool for decisions about patients."]  # fmt: skip
    return make_section("intended_use", "Intended use", text if not use else [], facts)


def factors(run: RunFacts) -> dict[str, Any]:
    asked = run.cfg("eval", "subgroups") or []
    if run.subgroups is not None:
        columns = run.subgroups.get("columns") if isinstance(run.subgroups, Mapping) else None
        groups = list(columns) if isinstance(columns, Mapping) else []
        facts = {"subgroups evaluated": ", ".join(map(str, groups or asked)) or "see Quantitative analyses"}
    elif asked:
        facts = {"subgroups evaluated": f"none: eval.subgroups lists {', '.join(asked)}, but the run has no "
                                        "subgroups.json"}  # fmt: skip
    else:
        facts = {"subgroups evaluated": "none evaluated: set eval.subgroups"}
    facts["minimum group size"] = run.cfg("eval", "min_group")
    text = ["Relevant factors for a medical model: patient groups (sex, age, ethnicity), sites, devices and "
            "acquisition settings, disease prevalence. Only those listed as evaluated were measured."]  # fmt: skip
    return make_section("factors", "Factors", text, facts)


def metrics(run: RunFacts) -> dict[str, Any]:
    ev = run.evaluation
    if ev is None:
        return make_section("metrics", "Metrics", ["Not evaluated: the run has no test_metrics.json (no test split, "
                                               "or evaluation did not finish)."])  # fmt: skip
    n_boot, level = ev.get("n_bootstrap"), ev.get("ci")
    facts: dict[str, Any] = {
        "test samples": ev.get("n"),
        "intervals": (f"{100 * level:g}% bootstrap percentile intervals, {n_boot} resamples"
                      if n_boot and number(level) is not None else "none (eval.bootstrap: 0)"),
        "headline metrics": ", ".join(ev.get("headline") or []),
    }  # fmt: skip
    if "threshold" in ev:
        facts["decision threshold"] = ev["threshold"]
    rows = [[name, metric_text(m)] for name, m in (ev.get("metrics") or {}).items() if is_metric(m)]
    tables = [{"title": "test metrics", "header": ["metric", "value [interval]"], "rows": rows}]
    text = []
    if isinstance(run.operating_point, Mapping):
        op_facts, op_tables = describe_json(run.operating_point)
        facts.update({f"operating point / {k}": v for k, v in op_facts.items()})
        tables += [{**t, "title": f"operating point: {t['title']}"} for t in op_tables]
    else:
        configured = ("; the decision threshold below is the configured one, not chosen on the validation split"
                      if "threshold" in ev else "")  # fmt: skip
        text.append(f"Operating point: not evaluated (the run has no operating_point.json){configured}.")
    return make_section("metrics", "Metrics", text, facts, tables)


def _data_facts(run: RunFacts, splits: list[str]) -> dict[str, Any]:
    prov = run.provenance
    facts: dict[str, Any] = {f"{s} samples": run.sizes.get(s, 0) for s in splits}
    facts.update({f"{s} labels": ", ".join(f"{k} {v}" for k, v in run.counts[s].items())
                  for s in splits if run.counts.get(s)})  # fmt: skip
    facts.update({"source": run.data.get("source") or run.cfg("data", "source"), "data": data_name(run)})
    for key in ("description", "citation"):
        if prov.get(key):
            facts[key] = prov[key]
    facts["licence"] = prov.get("licence") or "not stated"
    return facts


def evaluation_data(run: RunFacts) -> dict[str, Any]:
    split = run.cfg("data", "split") or {}
    facts = _data_facts(run, ["test"])
    facts["split"] = f"method {split.get('method')}, test fraction {split.get('test')}, seed {split.get('seed')}"
    text = ["The test split of the same data the model was trained on; no sample of it was used to train "
            "or to choose the checkpoint (that is the validation split)."]
    if run.inputs:
        text.append(f"Inputs: {run.inputs}")
    return make_section("evaluation_data", "Evaluation data", text, facts)


def training_data(run: RunFacts) -> dict[str, Any]:
    facts = _data_facts(run, ["train", "val"])
    facts["skipped inputs"] = run.data.get("skipped", 0)
    text = ["The validation split chose the best checkpoint (and, where the task does so, the operating "
            "point); the training split alone fitted the weights and any scaling or class weights."]  # fmt: skip
    checks = audit_checks(run)
    if checks:
        rows = [[c.get("name", ""), c.get("status", ""), c.get("message", "")] for c in checks]
        tables = [{"title": "data audit (data_audit.json)", "header": ["check", "verdict", "finding"], "rows": rows}]
    else:
        tables, facts["data audit"] = [], "not run (no data_audit.json)"
    return make_section("training_data", "Training data", text, facts, tables)


def audit_checks(run: RunFacts) -> list[dict[str, Any]]:
    """The data audit's checks ({"name", "status", "message"}), as far as the file has them."""
    checks = run.audit.get("checks") if isinstance(run.audit, Mapping) else None
    return [c for c in checks if isinstance(c, Mapping)] if isinstance(checks, list) else []


def _calibration(ev: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cal = ev.get("calibration")
    if not isinstance(cal, Mapping):
        return {"calibration": "not evaluated by this task"}, []
    facts = {f"calibration / {k}": v for k, v in cal.items() if number(v) is not None}
    lists = {k: v for k, v in cal.items() if isinstance(v, list) and v}
    length = max((len(v) for v in lists.values()), default=0)
    columns = [k for k, v in lists.items() if len(v) == length]
    rows = [[show(lists[c][i]) for c in columns] for i in range(length)
            if all(number(lists[c][i]) is not None and math.isfinite(lists[c][i]) for c in columns)]  # fmt: skip
    return facts, ([{"title": "calibration", "header": columns, "rows": rows}] if rows and columns else [])


def quantitative(run: RunFacts) -> dict[str, Any]:
    ev = run.evaluation or {}
    facts: dict[str, Any] = {}
    tables: list[dict[str, Any]] = []
    text = []
    if run.subgroups is not None:
        sub_facts, sub_tables = describe_json(run.subgroups)
        facts.update({f"subgroups / {k}": v for k, v in sub_facts.items()})
        tables += [{**t, "title": f"subgroups: {t['title']}"} for t in sub_tables]
    else:
        text.append("Subgroup results: not evaluated (set eval.subgroups to the columns that name patient "
                    "groups or sites).")  # fmt: skip
    if run.evaluation is None:
        text.append("Calibration: not evaluated (no test metrics).")
    else:
        cal_facts, cal_tables = _calibration(ev)
        facts.update(cal_facts)
        tables += cal_tables
    for key, value in ev.items():  # per-class / per-target tables a task writes
        if key.startswith("per_") and isinstance(value, Mapping):
            more_facts, more_tables = describe_json(value, key)
            facts.update(more_facts)
            tables += more_tables
    return make_section("quantitative", "Quantitative analyses", text, facts, tables)


def ethics(run: RunFacts) -> dict[str, Any]:
    ledger = run.privacy if isinstance(run.privacy, Mapping) else None
    if ledger is not None:
        keys = ("epsilon", "delta", "accountant", "target_epsilon", "epsilon_rdp", "epsilon_prv", "max_grad_norm",
                "noise_multiplier", "steps", "training_samples", "unreadable")  # fmt: skip
        facts = {f"differential privacy / {k}": ledger[k] for k in keys if k in ledger}
        text = [f"Trained with differential privacy (DP-SGD): epsilon {show(ledger.get('epsilon'))} at delta "
                f"{show(ledger.get('delta'))} ({ledger.get('accountant')} accountant) bounds how much the weights "
                "depend on any one training sample (privacy.json)."]  # fmt: skip
    else:
        facts = {"differential privacy": "not used (no privacy.json)"}
        text = ["Not trained with differential privacy: the weights may memorise individual training samples; "
                "share them only where the training data may be shared."]  # fmt: skip
    facts["de-identification"] = run.provenance.get("deidentification") or (
        "unknown: the run does not record whether the inputs were de-identified")
    facts["identifiers in this card"] = "none: no sample ids; the data is named by its folder or file name only"
    return make_section("ethics", "Ethical considerations", text, facts)


def environment(run: RunFacts) -> dict[str, Any]:
    return make_section("environment", "Environment", [run.environment_note], dict(run.environment))
