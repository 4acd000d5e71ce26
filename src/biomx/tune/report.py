"""What a search leaves in its tune folder: tune_summary.json, report.md (with history.png) and
best_config.yaml, the original config with the best parameters applied, ready for `biomx train`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import yaml

from biomx.engine.checkpoint import atomic_write_text
from biomx.runs import write_json

if TYPE_CHECKING:
    from biomx.tune.search import Setup


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _rows(study) -> list[dict[str, Any]]:
    return [{"number": t.number, "state": t.state.name.lower(), "value": _number(t.value), "params": t.params,
             "epochs": len(t.intermediate_values), "run": t.user_attrs.get("run"),
             "retry_of": t.user_attrs.get("retry_of")} for t in study.get_trials(deepcopy=False)]  # fmt: skip


def _importances(study) -> dict[str, float]:
    """Parameter importances (optuna.importance, its default evaluator) once two trials
    completed; {} before, or when the parameters did not vary."""
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}


def _history_figure(setup: Setup, rows: list[dict[str, Any]]) -> str | None:
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not done:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], s=18, label="trial")
    best, running = [], None
    pick = min if setup.direction == "minimize" else max
    for r in done:
        running = r["value"] if running is None else pick(running, r["value"])
        best.append(running)
    ax.step([r["number"] for r in done], best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(setup.metric)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(setup.dir / "history.png", dpi=100)
    return "history.png"


def _markdown(setup: Setup, summary: dict[str, Any], figure: str | None) -> str:
    lines = [f"# Tuning: {setup.study_name}", "",
             f"{summary['counts']} trials; metric {setup.metric} ({setup.direction}).", ""]  # fmt: skip
    best = summary["best"]
    if best:
        lines += [f"Best: trial {best['number']}, {setup.metric} = {best['value']:.4g}, {best['params']}",
                  f"(run {best['run']}); `biomx train best_config.yaml` trains it.", ""]  # fmt: skip
    if figure:
        lines += [f"![optimisation history]({figure})", ""]
    if summary["importances"]:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in summary["importances"].items()] + [""]
    keys = list(setup.tune.space)
    lines += ["| trial | state | value | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for r in summary["trials"]:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        params = " | ".join(str(r["params"].get(k, "")) for k in keys)
        lines.append(f"| {r['number']} | {r['state']} | {value} | {params} |")
    return "\n".join(lines) + "\n"


def write_summary(setup: Setup, study) -> dict[str, Any]:
    """tune_summary.json, report.md, history.png and best_config.yaml in the tune folder."""
    from biomx.config import dump_config

    rows = _rows(study)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    pick = min if setup.direction == "minimize" else max
    best = pick(complete, key=lambda r: r["value"]) if complete else None
    summary = {"study": setup.study_name, "metric": setup.metric, "direction": setup.direction,
               "counts": ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), "best": best,
               "importances": _importances(study), "trials": rows}  # fmt: skip
    write_json(setup.dir / "tune_summary.json", summary)
    atomic_write_text(setup.dir / "report.md", _markdown(setup, summary, _history_figure(setup, rows)))
    if best is not None:
        cfg = setup.trial_config(best["params"], None)
        cfg = cfg.model_copy(update={"output": setup.cfg.output})
        plain = {k: v for k, v in yaml.safe_load(dump_config(cfg)).items() if k != "tune"}
        text = yaml.safe_dump(plain, sort_keys=False)
        atomic_write_text(setup.dir / "best_config.yaml", f"# biomx tune: trial {best['number']}, "
                          f"{setup.metric} = {best['value']:.4g}\n{text}")  # fmt: skip
        print(f"tune: best trial {best['number']}: {setup.metric} = {best['value']:.4g} {best['params']}")
    print(f"tune: {summary['counts']}; summary in {setup.dir / 'report.md'}")
    return summary
