"""Explanations you can check: the model-randomisation test and the agreement of two methods.

Adebayo et al. (2018), "Sanity checks for saliency maps": an explanation of a trained model that
looks the same for the same model with random weights says little about what the model learned
(edge detectors and input-times-gradient maps can pass for explanations of an untrained network).
For a handful of test samples, every attribution method the modality offers
(`protocols.AttributingModality.attribution_methods`) explains the trained model and a copy whose
weights are all re-initialised (independent full re-initialisation: every module's own
`reset_parameters`, then a fresh normal draw for any parameter left unchanged; the paper's
strongest form, cascading from the top layer down, is not run). Per sample we compare |attribution|
by Spearman rank correlation (and SSIM for 2D maps); a method whose median correlation exceeds
`FLAG_SPEARMAN` is flagged. The methods are also compared with each other (rank correlation and
the overlap of their top `TOP_FRACTION` features). Nothing here knows a modality or a task.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import uniform_filter
from scipy.stats import spearmanr
from torch import nn

from biomx.errors import BiomxError
from biomx.explain import eval_mode
from biomx.protocols import AttributingModality, TestView
from biomx.runs import write_json

# model, task, inputs (as the test dataset batches them, on the model's device), (N,) output columns
# -> (N, ...) attributions, or a list of N arrays (e.g. one value per atom of each molecule).
AttributionFn = Callable[[nn.Module, Any, Any, torch.Tensor], Any]

FLAG_SPEARMAN = 0.5  # median rank correlation (trained vs randomised) above this: flagged
MAX_SAMPLES = 8  # test samples checked at most (eval.explain caps it further)
TOP_FRACTION = 0.1  # the share of features whose overlap the method agreement reports
SSIM_WINDOW = 7  # pixels; 2D maps with a smaller side get no SSIM
SEED = 0  # of the re-initialisation


# ---------------------------------------------------------------------------------- similarities


def rank_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of |a| and |b| (flattened, same size). Features that are exactly 0 in
    both are left out: an input at the baseline's value gets 0 from integrated gradients and from
    occlusion by construction, whatever the weights, and such shared zeros would make any two
    explanations look alike. Two constant maps rank alike (1.0); one constant map against a varying
    one shares no order (0.0)."""
    x, y = np.abs(np.asarray(a, dtype=np.float64)).ravel(), np.abs(np.asarray(b, dtype=np.float64)).ravel()
    if x.shape != y.shape:
        raise BiomxError(f"cannot compare attributions of {x.size} and {y.size} values")
    x, y = np.nan_to_num(x), np.nan_to_num(y)
    either = (x != 0) | (y != 0)
    x, y = x[either], y[either]
    flat_x, flat_y = np.ptp(x) == 0 if x.size else True, np.ptp(y) == 0 if y.size else True
    if flat_x or flat_y:
        return 1.0 if flat_x and flat_y else 0.0
    return float(spearmanr(x, y).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float | None:
    """Structural similarity of two 2D maps of |attribution|, each scaled to [0, 1] by its own peak
    (Wang et al. 2004, a uniform `SSIM_WINDOW` window); None for anything else or a smaller map."""
    x, y = np.abs(np.asarray(a, dtype=np.float64)), np.abs(np.asarray(b, dtype=np.float64))
    if x.ndim != 2 or x.shape != y.shape or min(x.shape) < SSIM_WINDOW:
        return None
    x, y = (m / m.max() if m.max() > 0 else m for m in (np.nan_to_num(x), np.nan_to_num(y)))
    c1, c2 = 0.01**2, 0.03**2  # data range 1

    def mean(m: np.ndarray) -> np.ndarray:
        return uniform_filter(m, size=SSIM_WINDOW)

    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    half = SSIM_WINDOW // 2  # the border, where the window leaves the map, is left out
    return float(index[half:-half, half:-half].mean())


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """The share of the top `fraction` features by |a| that are also in the top of |b|."""
    x, y = np.abs(np.asarray(a, dtype=np.float64)).ravel(), np.abs(np.asarray(b, dtype=np.float64)).ravel()
    k = max(1, int(round(fraction * x.size)))
    top_x = set(np.argsort(-np.nan_to_num(x), kind="stable")[:k].tolist())
    top_y = set(np.argsort(-np.nan_to_num(y), kind="stable")[:k].tolist())
    return len(top_x & top_y) / k


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min and max of the defined values, and how many there were (None when none)."""
    found = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(found):
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": float(np.median(found)), "min": float(found.min()), "max": float(found.max()), "n": len(found)}


# ---------------------------------------------------------------------------------- the models


def learns(model: nn.Module) -> bool:
    """Whether the model has weights trained by gradients (a fitted solver keeps its state in buffers):
    gradient attributions and the randomisation test need them."""
    return any(p.requires_grad for p in model.parameters())


def randomised_copy(model: nn.Module, seed: int = SEED) -> tuple[nn.Module, int, int]:
    """(a copy of `model` with every parameter re-initialised, tensors changed, tensors in all).

    Each module's own `reset_parameters` draws its weights as at construction (batch norms also
    forget their running statistics); a parameter that is still unchanged (a module without that
    method, e.g. a learned token) is drawn from a normal with its trained standard deviation. The
    draw uses a forked CPU generator, so the caller's random state is untouched.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    clone = copy.deepcopy(model).cpu()
    before = {name: p.detach().clone() for name, p in clone.named_parameters()}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        for name, p in clone.named_parameters():
            if p.is_floating_point() and p.numel() and torch.equal(p, before[name]):
                std = float(before[name].float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 0.02)
    changed = sum(not torch.equal(p, before[name]) for name, p in clone.named_parameters())
    return clone.to(device), changed, len(before)


def _per_sample(attributions: Any, n: int, method: str) -> list[np.ndarray]:
    """A method's output as one float array per sample."""
    if isinstance(attributions, torch.Tensor):
        attributions = attributions.detach().float().cpu().numpy()
    found = [np.asarray(a, dtype=np.float64) for a in attributions]
    if len(found) != n:
        raise BiomxError(f"attribution method {method!r} returned {len(found)} attributions for {n} samples")
    return found


def attribute_all(methods: dict[str, AttributionFn], model: nn.Module, task: Any, inputs: Any,
                  columns: torch.Tensor) -> dict[str, list[np.ndarray]]:  # fmt: skip
    """Every method's per-sample attributions of `model`."""
    n = len(columns)
    with eval_mode(model):
        return {name: _per_sample(fn(model, task, inputs, columns), n, name) for name, fn in methods.items()}


# ---------------------------------------------------------------------------------- the check


def _compare(first: list[np.ndarray], second: list[np.ndarray]) -> dict[str, Any]:
    """Per-sample Spearman, SSIM (2D maps) and top overlap of two lists of attributions."""
    pairs = list(zip(first, second, strict=True))
    if any(a.size != b.size for a, b in pairs):
        return {"comparable": False}
    return {"comparable": True,
            "spearman": summary([rank_similarity(a, b) for a, b in pairs]),
            "ssim": summary([ssim(a, b) for a, b in pairs]),
            "top_overlap": summary([top_overlap(a, b) for a, b in pairs])}  # fmt: skip


def check_explanations(methods: dict[str, AttributionFn], model: nn.Module, task: Any, inputs: Any,
                       columns: torch.Tensor, seed: int = SEED) -> dict[str, Any]:  # fmt: skip
    """The randomisation test of every method and the agreement of every pair (see the module).

    Returns a JSON-able dict: "randomisation" (per method: similarities and "flagged"),
    "agreement" (per pair of methods), "reinitialised" (tensors changed / all), "threshold".
    """
    trained = attribute_all(methods, model, task, inputs, columns)
    result: dict[str, Any] = {"samples": len(columns), "methods": list(methods), "threshold": FLAG_SPEARMAN,
                              "randomisation_kind": "independent full re-initialisation",
                              "randomisation": {}, "agreement": {}}  # fmt: skip
    randomised, changed, total = randomised_copy(model, seed)
    result["reinitialised"] = {"changed": changed, "tensors": total}
    if changed:
        random = attribute_all(methods, randomised, task, inputs, columns)
        for name in methods:
            found = _compare(trained[name], random[name])
            median = found.get("spearman", {}).get("median")
            found["flagged"] = bool(median is not None and median > FLAG_SPEARMAN)
            result["randomisation"][name] = found
    for first, second in itertools.combinations(methods, 2):
        result["agreement"][f"{first} vs {second}"] = _compare(trained[first], trained[second])
    result["flagged"] = [name for name, found in result["randomisation"].items() if found["flagged"]]
    return result


def _cell(found: dict[str, Any], key: str) -> str:
    stats = found.get(key) or {}
    if stats.get("median") is None:
        return "-"
    return f"{stats['median']:.2f} ({stats['min']:.2f} to {stats['max']:.2f})"


def checks_section(result: dict[str, Any]) -> dict:
    """The report section "Explanation checks" of a `check_explanations` result."""
    rows = []
    for name, found in result["randomisation"].items():
        verdict = ("FLAGGED: the explanation barely depends on the learned weights" if found["flagged"]
                   else "changes with the weights" if found["comparable"] else "not comparable")  # fmt: skip
        rows.append([f"{name}: trained vs randomised", _cell(found, "spearman"), _cell(found, "ssim"),
                     _cell(found, "top_overlap"), verdict])  # fmt: skip
    for pair, found in result["agreement"].items():
        rows.append([f"{pair} (trained)", _cell(found, "spearman"), _cell(found, "ssim"), _cell(found, "top_overlap"),
                     "agreement" if found["comparable"] else "not comparable"])  # fmt: skip
    reinit = result["reinitialised"]
    note = ("" if reinit["changed"] else " The model has no weights to re-initialise (a fitted solver), so the "
            "randomisation test was not run.")  # fmt: skip
    text = (f"Model-randomisation test (Adebayo et al. 2018) on {result['samples']} test samples: each method "
            f"({', '.join(result['methods'])}) explains the trained model and a copy with every weight "
            f"re-initialised ({reinit['changed']} of {reinit['tensors']} tensors; independent full "
            "re-initialisation, not the cascading form). Median (range) over samples of the Spearman "
            "correlation of |attribution|, SSIM for 2D maps, and the overlap of the top "
            f"{TOP_FRACTION:.0%} features. A median Spearman above {FLAG_SPEARMAN} is flagged: such an "
            "explanation looks much the same for a model that learned nothing. The last rows compare "
            f"the methods with each other on the trained model.{note} Took {result['seconds']:.1f} s.")
    return {"title": "Explanation checks", "text": text,
            "table": {"header": ["comparison", "Spearman |attr|", "SSIM", f"top {TOP_FRACTION:.0%} overlap",
                                 "verdict"], "rows": rows}}  # fmt: skip


def _picks(task: Any, test: TestView, n: int) -> tuple[list[int], torch.Tensor]:
    """(test rows, the output column each explains): the task's own picks, else the first rows."""
    if hasattr(task, "pick_explained"):
        picks = task.pick_explained(test.predictions, test.targets, n)
        return [row for row, _, _ in picks], torch.tensor([int(c) for _, _, c in picks], dtype=torch.long)
    rows = list(range(min(n, len(test.index))))
    return rows, torch.zeros(len(rows), dtype=torch.long)


def explanation_checks(model: nn.Module, task: Any, modality: Any, test: TestView, n: int,
                       cfg: Any) -> list[dict]:  # fmt: skip
    """Run the checks on up to `MAX_SAMPLES` (and `n`, eval.explain) test samples of a run, write
    RUN/explanation_checks.json and return the report section; [] where the modality offers fewer
    than two attribution methods or `n` is 0."""
    if n <= 0 or not len(test.index) or not isinstance(modality, AttributingModality):
        return []
    methods = modality.attribution_methods(model, test, cfg)
    if len(methods) < 2:
        return []
    start = time.perf_counter()
    rows, columns = _picks(task, test, min(n, MAX_SAMPLES))
    if not rows:
        return []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs, _ = test.data.__getitems__(rows)
    result = check_explanations(methods, model, task, inputs.to(device), columns.to(device))
    result["seconds"] = time.perf_counter() - start
    if test.run_dir is not None:
        write_json(test.run_dir / "explanation_checks.json", result)
    return [checks_section(result)]


__all__ = ["AttributionFn", "FLAG_SPEARMAN", "attribute_all", "check_explanations", "checks_section",
           "explanation_checks", "learns", "randomised_copy", "rank_similarity", "ssim", "summary", "top_overlap"]  # fmt: skip
