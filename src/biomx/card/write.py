"""Build a run's model card from its files, render it as Markdown, write both files atomically.

    write_model_card(run_dir, environment)  ->  RUN/model_card.md, RUN/model_card.json

Called at the end of training and of `biomx evaluate` (with the environment that ran them), and
by `biomx card RUN`, which keeps the environment the previous card recorded.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from biomx.card import CARD_JSON, CARD_MD
from biomx.card.caveats import caveats
from biomx.card.facts import read_optional, show
from biomx.card.sections import (
    RunFacts,
    environment,
    ethics,
    evaluation_data,
    factors,
    intended_use,
    metrics,
    model_details,
    quantitative,
    training_data,
)
from biomx.engine.checkpoint import atomic_write_text
from biomx.errors import BiomxError
from biomx.runs import read_json

SCHEMA = "biomx.model_card/1"
SECTIONS = (model_details, intended_use, factors, metrics, evaluation_data, training_data, quantitative, ethics,
            caveats, environment)  # fmt: skip
BESIDE_DATA = ("readme", "attribution", "licence", "license")  # files next to the data that say where it is from


def card_section() -> dict[str, Any]:
    """The report's pointer to the card (a relative link: the card sits beside report.html)."""
    return {"title": "Model card", "link": {"href": CARD_MD, "text": CARD_MD},
            "text": "Intended use, data and licences, metrics with intervals, subgroups, calibration, operating "
                    "point, privacy, caveats and environment of this run, in the sections of Mitchell et al. "
                    f"(2019); {CARD_JSON} holds the same for programs; `biomx card RUN` writes both again."}  # fmt: skip


def write_model_card(run_dir: str | Path, environment: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write RUN/model_card.md and RUN/model_card.json; return their paths.

    `environment`: what trained or evaluated the run (`biomx.runs.environment`); None keeps the one
    the previous card recorded (or, for a run without one, this machine's, said as such).

    Raises:
        BiomxError: `run_dir` is not a run (no run.json).
    """
    run_dir = Path(run_dir)
    card = build_card(run_dir, environment)
    md, js = run_dir / CARD_MD, run_dir / CARD_JSON
    atomic_write_text(js, json.dumps(_json_safe(card), indent=2) + "\n")
    atomic_write_text(md, render_markdown(card))
    return md, js


def build_card(run_dir: Path, environment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card as JSON-able data: {"schema", "run", "written", "biomx", "sections": [...]}."""
    from biomx.version import __version__

    run = collect(run_dir, environment)
    return {"schema": SCHEMA, "run": run_dir.name, "written": datetime.now(UTC).isoformat(timespec="seconds"),
            "biomx": __version__, "sections": [make(run) for make in SECTIONS]}  # fmt: skip


def collect(run_dir: Path, environment: dict[str, Any] | None = None) -> RunFacts:
    """Every fact the sections need, from the run's files (optional ones may be absent)."""
    info = read_json(run_dir / "run.json")
    if not isinstance(info, dict):
        raise BiomxError(f"{run_dir / 'run.json'}: not a run description")
    config = _read_yaml(run_dir / "config.yaml")
    sizes, counts = split_counts(run_dir / "split.csv", (info.get("task") or {}).get("classes") or [])
    evaluation = read_optional(run_dir / "test_metrics.json")
    run = RunFacts(
        run_dir=run_dir, info=info, config=config, data=read_optional(run_dir / "data.json") or {},
        evaluation=evaluation if isinstance(evaluation, dict) and "unreadable" not in evaluation else None,
        counts=counts, sizes=sizes, privacy=read_optional(run_dir / "privacy.json"),
        operating_point=read_optional(run_dir / "operating_point.json"),
        subgroups=read_optional(run_dir / "subgroups.json"), audit=read_optional(run_dir / "data_audit.json"),
    )  # fmt: skip
    if not run.sizes:
        run.sizes = dict(run.data.get("split_sizes") or {})
    run.environment, run.environment_note = _environment(run_dir, environment)
    run.model = model_facts(run_dir, info)
    run.epochs_run = _epochs_run(run_dir)
    run.provenance = provenance(run)
    run.inputs = _inputs(info)
    return run


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def split_counts(path: Path, classes: list[str]) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(samples per split, label counts per split): labels are counted only when every one names a
    class of the task ("a|b" for several labels), so regression values are never listed."""
    try:
        with open(path, newline="") as f:
            rows = [(row.get("split") or "", row.get("label") or "") for row in csv.DictReader(f)]
    except OSError:
        return {}, {}
    sizes = dict(Counter(split for split, _ in rows))
    known = set(map(str, classes))
    labels = [(split, part) for split, label in rows for part in label.split("|") if part]
    if not known or not labels or any(part not in known for _, part in labels):
        return sizes, {}
    counts: dict[str, dict[str, int]] = {}
    for split, part in labels:
        counts.setdefault(split, dict.fromkeys(map(str, classes), 0))[part] += 1
    return sizes, counts


def _environment(run_dir: Path, given: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    if given:
        return dict(given), "The software and hardware that trained or last evaluated the run."
    previous = read_optional(run_dir / CARD_JSON)
    for section in (previous or {}).get("sections", []) if isinstance(previous, dict) else []:
        if isinstance(section, dict) and section.get("key") == "environment" and section.get("facts"):
            return dict(section["facts"]), " ".join(section.get("text") or [])
    from biomx.runs import environment

    return environment("not recorded"), ("The run recorded no environment: this is the software that wrote the "
                                         "card, not necessarily the one that trained the model.")  # fmt: skip


def _epochs_run(run_dir: Path) -> int | None:
    for path in (run_dir / "metrics.jsonl", run_dir / "members" / "0" / "metrics.jsonl"):
        if path.is_file():
            return sum(1 for line in path.read_text().splitlines() if line.strip())
    return None


def model_facts(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Architecture (each model's registry description), its arguments, size and training date."""
    from biomx import selection
    from biomx.models.registry import get_entry

    facts: dict[str, Any] = {"modality": info.get("modality"), "task": (info.get("task") or {}).get("name"),
                             "kind": (info.get("task") or {}).get("kind"),
                             "classes": ", ".join(map(str, (info.get("task") or {}).get("classes") or []))}  # fmt: skip
    try:
        specs = selection.member_specs(info)
    except (KeyError, TypeError):
        specs = []
    described = []
    for name, args in specs:
        try:
            description = get_entry(name).description
        except BiomxError:
            description = "not registered here"
        shown = {k: v for k, v in args.items() if k != "members"}
        described.append(f"{name} ({description}; arguments {json.dumps(shown, default=str)})")
    facts["architecture"] = "; ".join(described) or "not recorded"
    facts.update(_size(run_dir))
    facts["uncertainty"] = show(info.get("uncertainty") or {})
    return facts


def _size(run_dir: Path) -> dict[str, Any]:
    """Parameters of the model (each ensemble member has as many) and the training date."""
    from biomx.runs import load_run_models

    try:
        models, _ = load_run_models(run_dir)
    except BiomxError as err:
        return {"parameters": f"unknown ({str(err).splitlines()[0]})"}
    params = sum(p.numel() for p in models[0].parameters())
    out: dict[str, Any] = {"parameters" if len(models) == 1 else "parameters per member": params,
                           "ensemble members": len(models)}  # fmt: skip
    buffers = sum(b.numel() for b in models[0].buffers())
    if params == 0 and buffers:
        out["fitted values"] = buffers  # a solver's fitted state lives in buffers
    folders = [run_dir / "checkpoints", run_dir / "members" / "0" / "checkpoints"]  # one model, or the first member
    checkpoints = [f / name for name in ("best.safetensors", "last.safetensors") for f in folders if (f / name).is_file()]
    if checkpoints:
        stamp = datetime.fromtimestamp(checkpoints[0].stat().st_mtime, UTC)
        out["trained"] = stamp.isoformat(timespec="seconds")
    return out


def provenance(run: RunFacts) -> dict[str, str]:
    """Where the data came from: the modality's account (`protocols.DescribesData`) over a file
    beside the data that says it (README, ATTRIBUTION, LICENSE: named, never read)."""
    out: dict[str, str] = {}
    path = run.data.get("path")
    folder = Path(str(path)) if path else None
    folder = folder if folder is None or folder.is_dir() else folder.parent
    if folder is not None and folder.is_dir():
        beside = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().startswith(BESIDE_DATA))
        if beside:
            out["licence"] = f"not stated in the run; see {', '.join(beside)} beside the data"
    out.update({k: str(v) for k, v in _modality_card(run).items() if v})
    return out


def _modality_card(run: RunFacts) -> dict[str, Any]:
    from biomx.config import load_config
    from biomx.modalities import get_modality
    from biomx.protocols import DescribesData

    try:
        modality = get_modality(str(run.info.get("modality")))
        if not isinstance(modality, DescribesData):
            return {}
        return dict(modality.data_card(load_config(run.run_dir / "config.yaml")))
    except BiomxError:
        return {}  # a plug-in or config this installation cannot read: the card says "not stated"


def _inputs(info: dict[str, Any]) -> str:
    """What the model takes, in words, from the modality's export plan (when it has one)."""
    from biomx.modalities import get_modality
    from biomx.protocols import ExportableModality

    try:
        modality = get_modality(str(info.get("modality")))
        if not isinstance(modality, ExportableModality):
            return ""
        plan = modality.export_plan(info.get("preprocessing") or {})
    except (BiomxError, KeyError, TypeError, ValueError):
        return ""
    return f"{plan.outside}; the model then takes {plan.input.description}."


# ---------------------------------------------------------------------------------- Markdown


def _cell(value: Any) -> str:
    return show(value).replace("|", "\\|").replace("\n", " ")


def _table(table: dict[str, Any]) -> list[str]:
    lines = [f"*{table['title']}*", "", "| " + " | ".join(map(_cell, table["header"])) + " |",
             "|" + "---|" * len(table["header"])]  # fmt: skip
    lines += ["| " + " | ".join(map(_cell, row)) + " |" for row in table["rows"]]
    if table.get("note"):
        lines += ["", f"({table['note']})"]
    return [*lines, ""]


def render_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown: one `##` heading per section, facts as a list, tables as tables."""
    lines = [f"# Model card: {card['run']}", "",
             f"Written {card['written']} by biomx {card['biomx']} from the run's own files, in the sections of "
             "Mitchell et al. (2019), \"Model Cards for Model Reporting\". `model_card.json` holds the same facts; "
             "`biomx card RUN` writes both again.", ""]  # fmt: skip
    for section in card["sections"]:
        lines += [f"## {section['title']}", ""]
        for paragraph in section["text"]:
            lines += [paragraph, ""]
        if section["facts"]:
            lines += [f"- **{name}**: {_cell(value)}" for name, value in section["facts"].items()] + [""]
        for item in section.get("items") or []:
            lines.append(f"- {item}")
        if section.get("items"):
            lines.append("")
        for table in section["tables"]:
            lines += _table(table)
    return "\n".join(lines).rstrip() + "\n"


def _json_safe(value: Any) -> Any:
    """NaN and infinities (an undefined metric) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
