"""`biomx drift RUN INPUTS...`: new inputs against a run's training data, three ways.

1. Input statistics (the modality's `input_statistics`, optional): one two-sample test each, KS for
   numbers and chi-square for categories.
2. The model's embeddings (its head's input): an MMD test with an RBF kernel, permutation p-value.
3. The model's predictions: chi-square on the predicted labels (a task that labels), else KS on
   each predicted value.

All p-values are Holm-adjusted together; the verdict is "drift" when any adjusted p-value is below
alpha. drift.json keeps every test (statistic, raw and adjusted p, sample sizes), drift.md the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomx.drift.data import ModelView, model_view, new_rows, reference_rows, representation
from biomx.drift.log import read_log
from biomx.drift.stats import holm, mmd_test, two_sample
from biomx.engine.checkpoint import atomic_write_text
from biomx.errors import BiomxError
from biomx.export.graph import LoadedGraph, load_graph
from biomx.protocols import DriftStatistics, LabellingTask, RowTask
from biomx.runs import write_json

DEFAULT_REFERENCE = 1000  # training rows compared (a seeded sample of a larger split)
MMD_MAX = 500  # rows per side in the MMD test (a seeded sample of more)
PERMUTATIONS = 500
ALPHA = 0.05


def _test(kind: str, name: str, test: str, result: dict[str, Any], n_ref: int, n_new: int) -> dict[str, Any]:
    return {"kind": kind, "name": name, "test": test, "n_reference": n_ref, "n_new": n_new, **result}


def statistics(loaded: LoadedGraph, raw: Any) -> dict[str, np.ndarray] | None:
    """The modality's input statistics of raw rows, or None when it gives none."""
    if not isinstance(loaded.modality, DriftStatistics):
        return None
    return loaded.modality.input_statistics(loaded.info["preprocessing"], raw)


def input_tests(ref: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One test per input statistic both sides have."""
    tests = []
    for name in [n for n in ref if n in new]:
        test, result = two_sample(ref[name], new[name])
        tests.append(_test("input", name, test, result, len(ref[name]), len(new[name])))
    return tests


def _capped(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[np.sort(rng.choice(len(x), MMD_MAX, replace=False))] if len(x) > MMD_MAX else x


def embedding_test(ref: ModelView, new: ModelView, seed: int, permutations: int) -> dict[str, Any]:
    """MMD between the embeddings (each side a seeded sample of up to MMD_MAX rows)."""
    rng = np.random.default_rng(seed)
    a, b = _capped(ref.embeddings, rng), _capped(new.embeddings, rng)
    result = mmd_test(a, b, permutations=permutations, seed=seed)
    return _test("embedding", "model embedding", "MMD (RBF kernel, permutation)", result, len(a), len(b))


def prediction_tests(loaded: LoadedGraph, ref: ModelView, new: ModelView) -> list[dict[str, Any]]:
    """Predicted labels (chi-square; one test per label column of a multi-label task), else each
    predicted value (KS)."""
    task = loaded.task
    n_ref, n_new = len(ref.predictions), len(new.predictions)
    if isinstance(task, LabellingTask):
        a, b = np.asarray(task.predict_labels(ref.predictions)), np.asarray(task.predict_labels(new.predictions))
        if a.ndim == 1:
            names = np.asarray(task.classes, dtype=object)
            a, b = (names[x.astype(int)] if len(names) > int(x.max(initial=0)) else x for x in (a, b))
            return [_test("prediction", "predicted class", *two_sample(a, b), n_ref, n_new)]
        a, b = a.reshape(n_ref, -1), b.reshape(n_new, -1)
        return [_test("prediction", f"predicted {task.classes[j] if j < len(task.classes) else j}",
                      *two_sample(a[:, j].astype(bool), b[:, j].astype(bool)), n_ref, n_new)
                for j in range(a.shape[1])]  # fmt: skip
    names = task.output_names() if isinstance(task, RowTask) else []
    width = ref.predictions.shape[1]
    names = names if len(names) == width else [str(j) for j in range(width)]
    return [_test("prediction", f"predicted {names[j]}", *two_sample(ref.predictions[:, j], new.predictions[:, j]),
                  n_ref, n_new) for j in range(width)]  # fmt: skip


def _verdict(tests: list[dict[str, Any]], alpha: float) -> str:
    drifted = [f"{t['name']} ({t['test'].split(' ')[0]}, p={t['p_adjusted']:.2g})" for t in tests if t["drift"]]
    return "drift: " + "; ".join(drifted) if drifted else "no drift detected"


def _new_side(loaded: LoadedGraph, inputs: list[str | Path], from_log: str | Path | None,
              skip_errors: bool) -> tuple[ModelView | None, dict[str, np.ndarray] | None, int, list]:  # fmt: skip
    """(model view or None from a log, input statistics, rows, skipped inputs) of the new data."""
    if from_log is not None:
        stats, preds = read_log(from_log, loaded.run_dir.resolve().name)
        return ModelView(np.zeros((len(preds), 0)), preds), stats, len(preds), []
    raw, failures = new_rows(loaded, inputs, skip_errors)
    return model_view(loaded, raw), statistics(loaded, raw), len(raw), failures


def compare(run_dir: str | Path, inputs: list[str | Path], *, reference_size: int = DEFAULT_REFERENCE,
            seed: int = 0, alpha: float = ALPHA, permutations: int = PERMUTATIONS, skip_errors: bool = False,
            from_log: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Every drift test of new inputs (or a server's drift log) against a run's training data,
    Holm-adjusted, and the verdict. From a log there is no embedding test (no inputs are logged).

    Raises:
        BiomxError: not a run, a missing or unreadable input, a run that cannot be graphed.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file() and not (run_dir / "checkpoints").is_dir():
        raise BiomxError(f"{run_dir}: not a run (no run.json or checkpoints/)")
    if not inputs and from_log is None:
        raise BiomxError("drift: name new inputs (files or folders) or a server's log with --from-log FILE")
    loaded = load_graph(run_dir)
    new_view, new_stats, n_new, failures = _new_side(loaded, inputs, from_log, skip_errors)
    ref_raw, n_train = reference_rows(loaded, reference_size, seed)
    ref_view, ref_stats = model_view(loaded, ref_raw), statistics(loaded, ref_raw)
    no_inputs = None if ref_stats is not None else f"the {loaded.modality.name} modality gives no input statistics"
    tests = input_tests(ref_stats, new_stats or {}) if ref_stats is not None else []
    if from_log is None:
        tests.append(embedding_test(ref_view, new_view, seed, permutations))
    tests.extend(prediction_tests(loaded, ref_view, new_view))
    for t, adjusted in zip(tests, holm([t["p_value"] for t in tests]), strict=True):
        t["p_adjusted"] = adjusted
        t["drift"] = bool(np.isfinite(adjusted) and adjusted < alpha)
    verdict = _verdict(tests, alpha)
    return {"run": str(run_dir), "inputs": [str(p) for p in inputs], "from_log": str(from_log) if from_log else None,
            "verdict": verdict, "drift": verdict != "no drift detected", "alpha": alpha,
            "correction": "Holm over all tests",
            "reference": {"split": "train", "rows": len(ref_raw), "of": n_train, "seed": seed},
            "new": {"rows": n_new, "skipped": [list(f) for f in failures]},
            "embedding": representation(loaded) if from_log is None else "not compared (a log keeps no inputs)",
            "input_statistics": no_inputs or "compared", "tests": tests}  # fmt: skip


def verdict_lines(result: dict[str, Any]) -> list[str]:
    """One line per test, then the overall verdict."""
    lines = []
    for t in result["tests"]:
        state = "DRIFT" if t["drift"] else "ok"
        lines.append(f"{state:5} {t['kind']:10} {t['name']}: {t['test']} statistic {t['statistic']:.3g}, "
                     f"p {t['p_value']:.3g} (adjusted {t['p_adjusted']:.3g})")  # fmt: skip
    if result["input_statistics"] != "compared":
        lines.append(f"note: input statistics not compared: {result['input_statistics']}")
    ref, new = result["reference"], result["new"]
    lines.append(f"{result['verdict']} ({len(result['tests'])} tests, Holm-adjusted alpha {result['alpha']:g}; "
                 f"{ref['rows']} training rows vs {new['rows']} new inputs)")  # fmt: skip
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The report section: the verdict and a table of the tests."""
    rows = ["| kind | what | test | statistic | p | adjusted p | drift |", "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for t in result["tests"]:
        rows.append(f"| {t['kind']} | {t['name']} | {t['test']} | {t['statistic']:.3g} | {t['p_value']:.3g} | "
                    f"{t['p_adjusted']:.3g} | {'yes' if t['drift'] else 'no'} |")  # fmt: skip
    ref, new = result["reference"], result["new"]
    return "\n".join([
        "## Drift", "", f"**{result['verdict']}** (Holm-adjusted over {len(result['tests'])} tests, alpha "
        f"{result['alpha']:g}).", "",
        f"Reference: {ref['rows']} of the run's {ref['of']} training rows (seed {ref['seed']}); new: {new['rows']} "
        f"inputs ({len(new['skipped'])} skipped). Embedding: {result['embedding']}.", "", *rows, ""])  # fmt: skip


def run_drift(run_dir: str, inputs: list[str], out: str | None, **options: Any) -> tuple[dict[str, Any], Path]:
    """(the result, the folder written) for `biomx drift`: drift.json and drift.md in `out`
    (default RUN/drift/)."""
    result = compare(run_dir, inputs, **options)
    folder = Path(out) if out else Path(run_dir) / "drift"
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "drift.json", result)
    atomic_write_text(folder / "drift.md", markdown(result))
    return result, folder
