"""Semantic segmentation: a voxel-wise loss for training, overlap and surface metrics for testing.

A model outputs logits (N, K, *S) for K classes, background first; targets are integer label
maps (N, *S). Training uses MONAI's Dice, Dice + cross-entropy or focal loss. Validation
reports one cheap number per epoch (Dice pooled over the batch's voxels). The test set is
scored case by case on each scan's own grid and spacing (`case_metrics`), then summarised
with bootstrap CIs over cases (`SegmentationTask.evaluate`), so a confidence interval reflects
case-to-case variation, not voxel counts.

Surface metrics follow MONAI's voxel conventions (`compute_hausdorff_distance`,
`compute_surface_dice` without sub-voxel areas): a mask's surface is its voxels that
`scipy.ndimage.binary_erosion` (cross-shaped element) removes, and distances are Euclidean
between surface voxel centres in millimetres. They are computed inside the bounding box of
pred | truth (plus a one-voxel margin, so erosion at the crop edge matches erosion of the
whole scan) with a KD-tree over the surface voxels, so the cost scales with the object's
surface, not with the scan: a small lesion in a 256 x 256 x 128 volume takes milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import ndimage
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from biomx.engine import distributed as dist
from biomx.errors import ConfigError, DataError
from biomx.protocols import PredictRequest, TestRun
from biomx.tasks.stats import nanmean as _nanmean
from biomx.tasks.stats import percentile_ci as _percentile_ci

LOSSES = ("dice", "dice_ce", "focal")
CASE_METRICS = ("dice", "hd95", "surface_dice")
VOLUMES = ("volume_true", "volume_pred")
SEGMENTATION_QUICK_METRICS = ("dice",)
MAX_CLASSES = 256  # labels are stored as uint8
_BLOCK_VALUES = 4_000_000  # bootstrap resamples are gathered in blocks this big, to bound memory


@dataclass
class SegmentationTask:
    """A segmentation problem: class names (background first) and the training loss.

    Dice-based losses follow nnU-Net: Dice over the foreground classes only, pooled over the
    whole batch ("batch Dice"), which stays defined when a patch holds no lesion; in dice_ce the
    cross-entropy term covers the background. Focal loss is the softmax focal loss over every
    class (gamma 2), for heavy class imbalance.
    """

    classes: list[str]
    loss_name: str = "dice_ce"
    min_component_size: float = 0.0  # mm^3 (volumes) or pixels (2D images): smaller blobs removed
    kind: ClassVar[str] = "segmentation"
    threshold: ClassVar[None] = None  # argmax, no threshold (what the report prints)
    _loss_fn: torch.nn.Module = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.classes, (list, tuple)) or not 2 <= len(self.classes) <= MAX_CLASSES:
            raise ConfigError(f"task.classes: expected a list of 2 to {MAX_CLASSES} class names, background first, "
                              f"got {self.classes!r}")
        self.classes = [str(c) for c in self.classes]
        if "" in self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task.classes: names must be unique, non-empty, got {self.classes}")
        if self.loss_name not in LOSSES:
            raise ConfigError(f"task.loss: expected one of {', '.join(LOSSES)} for segmentation, "
                              f"got {self.loss_name!r}")
        if not (isinstance(self.min_component_size, (int, float)) and self.min_component_size >= 0):
            raise ConfigError(f"task.min_component_size: expected a size >= 0 (mm^3, or pixels in 2D), "
                              f"got {self.min_component_size!r}")
        self._loss_fn = _build_loss(self.loss_name)

    # ------------------------------------------------------------------ the Task protocol

    name: ClassVar[str] = "segmentation"
    headline: ClassVar[tuple[str, ...]] = ("dice", "hd95", "surface_dice")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "loss": self.loss_name,
                "min_component_size": self.min_component_size}  # fmt: skip

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        """Whole test cases by sliding windows (rank 0 only: no batched predictions to gather)."""
        from biomx.tasks.segmentation.inference import evaluate_cases

        return evaluate_cases(self, run) if dist.is_main() else (None, [])

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        """The case overlays come from `evaluate_test`; the metrics table says the rest."""
        return []

    def predict(self, request: PredictRequest) -> dict[str, list]:
        """Masks on each scan's own grid, one row per scan with its class volumes."""
        from biomx.tasks.segmentation.inference import predict_masks

        if request.engine is not None:  # scans are predicted window by window, not as one graph input
            raise ConfigError(f"--engine {request.engine.name}: segmentation predicts each scan through "
                              "sliding windows, which the exported graph does not hold; use --engine torch")

        return predict_masks(self, request)

    def postprocess(self, mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """A predicted label map with its small blobs removed (see `remove_small_components`)."""
        return remove_small_components(mask, spacing, self.min_component_size)

    @property
    def out_dim(self) -> int:
        """Number of output channels: one logit per class, background included."""
        return len(self.classes)

    @property
    def foreground(self) -> list[str]:
        """The scored classes: every class but the background (classes[0])."""
        return self.classes[1:]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean training loss of logits (N, K, *S) against label maps (N, *S), 2D or 3D.

        Computed in float32 (Dice sums over many voxels lose precision in half precision).

        Raises:
            DataError: if the shapes do not fit each other or the number of classes.
        """
        k = len(self.classes)
        if outputs.ndim < 3 or outputs.shape[1] != k or tuple(targets.shape) != (outputs.shape[0], *outputs.shape[2:]):
            raise DataError(f"segmentation task: outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} "
                            f"do not fit (N, {k}, *S) logits and (N, *S) labels; check the model's out_dim")
        return self._loss_fn(outputs.float(), targets.unsqueeze(1).long())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K, *S), float32: the softmax of the logits."""
        return torch.softmax(outputs.float(), dim=1)

    def predict_labels(self, probs: np.ndarray) -> np.ndarray:
        """Label maps (N, *S) uint8: the most probable class of each voxel."""
        return np.asarray(probs).argmax(axis=1).astype(np.uint8)

    def quick_metrics(self, probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Mean foreground Dice of the argmax labels, pooled over every voxel of the batch.

        Pooling (one Dice per class over all voxels, not a mean of per-patch Dice) keeps patches
        without a lesion from counting as perfect or as failures. A class absent from both the
        prediction and the truth is left out; NaN if no class is left, or if probs are not
        finite (a diverged model), never raising for those.

        Raises:
            DataError: if probs (N, K, *S) and targets (N, *S) do not fit each other.
        """
        probs, targets = np.asarray(probs), np.asarray(targets)
        k = len(self.classes)
        if probs.ndim < 3 or probs.shape[1] != k or targets.shape != (probs.shape[0], *probs.shape[2:]):
            raise DataError(f"segmentation task: probs {probs.shape} and targets {targets.shape} do not fit "
                            f"(N, {k}, *S) and (N, *S)")
        if not np.isfinite(probs).all():
            return {"dice": float("nan")}
        pred = probs.argmax(axis=1).ravel()
        truth = targets.ravel().astype(np.int64)
        valid = (truth >= 0) & (truth < k)
        confusion = np.bincount(truth[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
        overlap = np.diag(confusion)[1:].astype(np.float64)
        total = confusion.sum(axis=0)[1:] + confusion.sum(axis=1)[1:]
        present = total > 0
        dice = 2.0 * overlap[present] / total[present]
        return {"dice": float(dice.mean()) if len(dice) else float("nan")}

    def evaluate(self, cases: list[dict], *, n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
        """Test summary: mean Dice, HD95 and surface Dice with bootstrap CIs over cases.

        Each class's value is its mean over cases (HD95: over the cases where it is defined, i.e.
        where neither mask is empty); the headline `metrics` are means over the foreground
        classes. Every bootstrap resample draws n cases with replacement and recomputes both
        steps, so the intervals reflect case-to-case variation.

        Args:
            cases: `case_metrics` results, one per test case.
            n_bootstrap: resamples (0: CIs are NaN).
            ci: level of the percentile intervals.
            seed: seed of the resampling; the same seed gives the same CIs.

        Returns:
            A JSON-serialisable dict (NaN allowed): kind, n, classes, ci, n_bootstrap,
            surface_tolerance_mm, metrics ({dice|hd95|surface_dice: {value, ci_low, ci_high}}),
            per_class ({class: {<metric>, <metric>_ci_low, <metric>_ci_high, ..., hd95_undefined}}).

        Raises:
            ConfigError: if n_bootstrap or ci is out of range.
            DataError: if a case lacks a metric or a class, or cases used different tolerances.
        """
        if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0 \
                or not 0.0 < ci < 1.0:
            raise ConfigError(f"evaluate: expected n_bootstrap >= 0 (an integer) and 0 < ci < 1, "
                              f"got n_bootstrap={n_bootstrap!r}, ci={ci}")
        fg = self.foreground
        values = {m: self._column(cases, m) for m in CASE_METRICS}  # each (n, K-1)
        tolerances = {float(c.get("surface_tolerance_mm", math.nan)) for c in cases}
        if len(tolerances) > 1:
            raise DataError(f"evaluate: cases were scored at different surface tolerances {sorted(tolerances)} mm; "
                            "score every case with the same eval.surface_tolerance_mm")
        n = len(cases)
        point = {m: _class_means(v, np.arange(n)[None])[0] for m, v in values.items()}  # (K-1,)
        boot = _bootstrap(values, n_bootstrap, seed)  # (B, K-1)
        metrics = {m: {"value": float(_nanmean(point[m])), **_percentile_ci(_nanmean(boot[m]), ci)}
                   for m in CASE_METRICS}  # fmt: skip
        per_class = {}
        for j, name in enumerate(fg):
            stats: dict[str, Any] = {}
            for m in CASE_METRICS:
                low_high = _percentile_ci(boot[m][:, j], ci)
                stats.update({m: float(point[m][j]), f"{m}_ci_low": low_high["ci_low"],
                              f"{m}_ci_high": low_high["ci_high"]})  # fmt: skip
            stats["hd95_undefined"] = int(np.isnan(values["hd95"][:, j]).sum())
            per_class[name] = stats
        return {
            "kind": self.kind, "headline": list(self.headline), "n": n, "classes": list(self.classes), "ci": float(ci),
            "n_bootstrap": int(n_bootstrap),
            "surface_tolerance_mm": tolerances.pop() if tolerances else float("nan"),
            "metrics": metrics, "per_class": per_class,
        }

    def case_table(self, cases: list[dict]) -> dict[str, list]:
        """Columns for a per-case CSV: id, then <metric>_<class> for every metric and
        foreground class (Dice, HD95 in mm, surface Dice, true and predicted volume in mm^3
        (mm^2 in 2D)), as strings with 6 significant digits ("nan" where undefined)."""
        columns: dict[str, list] = {"id": [str(c.get("id", "")) for c in cases]}
        for m in CASE_METRICS + VOLUMES:
            values = self._column(cases, m)
            for j, name in enumerate(self.foreground):
                columns[f"{m}_{name}"] = [f"{v:.6g}" for v in values[:, j]]
        return columns

    def _column(self, cases: list[dict], metric: str) -> np.ndarray:
        """(n_cases, K-1) float64 values of one metric, in foreground class order."""
        fg = self.foreground
        out = np.empty((len(cases), len(fg)))
        for i, case in enumerate(cases):
            by_class = case.get(metric) if isinstance(case, dict) else None
            if not isinstance(by_class, dict) or any(name not in by_class for name in fg):
                who = case.get("id", i) if isinstance(case, dict) else i
                raise DataError(f"evaluate: case {who!r} has no {metric!r} for every class {fg}; "
                                "score cases with case_metrics and the task's classes")
            out[i] = [float(by_class[name]) for name in fg]
        return out


def build_segmentation_task(classes: list[str], loss: str | None = None,
                            min_component_size: float = 0.0) -> SegmentationTask:  # fmt: skip
    """Build a validated SegmentationTask from config values.

    Args:
        classes: class names, background first, at least 2.
        loss: "dice", "dice_ce" or "focal"; None means dice_ce.
        min_component_size: predicted connected components smaller than this (mm^3 for
            volumes; pixels for 2D images, whose spacing is 1) become background; 0 keeps all.

    Raises:
        ConfigError: naming `task.classes`, `task.loss` or `task.min_component_size`.
    """
    return SegmentationTask(classes, loss_name="dice_ce" if loss is None else loss,
                            min_component_size=min_component_size)  # fmt: skip


def remove_small_components(mask: np.ndarray, spacing: Sequence[float], min_size: float) -> np.ndarray:
    """Set each class's connected components smaller than `min_size` (in spacing units) to background.

    Small isolated false positives cost little Dice but dominate HD95 (one speckle far from
    the lesion sets the distance), so removing blobs below the smallest plausible finding is
    the standard post-processing (as in nnU-Net). Components are 26-connected in 3D (8 in 2D):
    voxels touching at a corner belong together, so a thin oblique structure is not cut into
    "small" pieces. The size is physical (voxel count x voxel volume), so one setting holds
    across scans of different resolution.

    Args:
        mask: integer label map (*S), 0 = background.
        spacing: voxel size per axis of `mask`, in mm.
        min_size: the smallest kept component; 0 returns `mask` unchanged.

    Returns:
        a new array (or `mask` itself when nothing is removed).
    """
    if min_size <= 0:
        return mask
    voxel = float(np.prod(spacing))
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    out = mask
    for k in np.unique(mask):
        if k == 0:
            continue
        components, n = ndimage.label(mask == k, structure=structure)
        sizes = np.bincount(components.ravel(), minlength=n + 1) * voxel
        small = sizes < min_size
        small[0] = False  # the background of this class's map
        if small.any():
            out = out.copy() if out is mask else out
            out[small[components]] = 0
    return out


def case_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], classes: list[str],
                 tolerance_mm: float = 1.0, case_id: str = "") -> dict:
    """Dice, 95% Hausdorff distance and surface Dice of one case, per foreground class.

    HD95 is MONAI's `compute_hausdorff_distance(percentile=95)` (and DeepMind's
    surface-distance convention): the larger of the two directed 95th percentiles
    (pred -> truth surface, truth -> pred surface; linear interpolation), not the percentile
    of the pooled distances (medpy). Surface Dice is the normalised surface distance of
    Nikolov et al. 2021 with voxel counting (MONAI `compute_surface_dice`, no sub-voxel
    areas): surface voxels of either mask within `tolerance_mm` of the other's surface,
    over all surface voxels.

    A class empty in both masks scores Dice 1, surface Dice 1, HD95 0; empty in exactly one,
    Dice 0, surface Dice 0 and HD95 NaN (undefined; `evaluate` counts these).

    Args:
        pred, truth: integer label maps of the same shape, (H, W) or (D, H, W).
        spacing: voxel size in mm along each array axis.
        classes: class names, background first; label k is classes[k].
        tolerance_mm: surface Dice tolerance in mm.
        case_id: the case's name, for messages and the per-case table.

    Returns:
        {"id", "surface_tolerance_mm", "dice", "hd95", "surface_dice", "volume_true",
        "volume_pred"}, each metric a {class: float} dict over the foreground classes;
        volumes in mm^3 (mm^2 in 2D).

    Raises:
        DataError: if shapes, spacing or label values do not fit.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    where = f"case {case_id!r}" if case_id else "case"
    if pred.shape != truth.shape or pred.ndim not in (2, 3):
        raise DataError(f"{where}: predicted mask {pred.shape} and true mask {truth.shape} must be 2D or 3D "
                        "arrays of the same shape")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise DataError(f"{where}: spacing {spacing} must hold {pred.ndim} positive values in mm (one per axis)")
    tolerance_mm = float(tolerance_mm)
    if not tolerance_mm >= 0:
        raise ConfigError(f"eval.surface_tolerance_mm: expected a value >= 0, got {tolerance_mm}")
    k = len(classes)
    for name, labels in (("true", truth), ("predicted", pred)):
        integer = np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
        if labels.size and (not integer or labels.min() < 0 or labels.max() >= k):
            raise DataError(f"{where}: the {name} mask holds labels outside 0..{k - 1} (dtype {labels.dtype}, "
                            f"range {labels.min()}..{labels.max()}); check task.classes {list(classes)}")
    voxel = float(np.prod(spacing))
    out: dict[str, Any] = {"id": str(case_id), "surface_tolerance_mm": tolerance_mm,
                           **{m: {} for m in CASE_METRICS + VOLUMES}}  # fmt: skip
    for label, name in enumerate(classes[1:], start=1):
        p, t = pred == label, truth == label
        box = _bounding_box(p | t)
        p, t = (p[box], t[box]) if box is not None else (p[:0], t[:0])
        n_p, n_t = int(p.sum()), int(t.sum())
        out["volume_true"][name], out["volume_pred"][name] = n_t * voxel, n_p * voxel
        if n_p == 0 or n_t == 0:
            both_empty = n_p == n_t
            out["dice"][name] = out["surface_dice"][name] = float(both_empty)
            out["hd95"][name] = 0.0 if both_empty else float("nan")
            continue
        out["dice"][name] = 2.0 * int((p & t).sum()) / (n_p + n_t)
        d_pt, d_tp = _surface_distances(p, t, spacing)
        out["hd95"][name] = float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
        close = int((d_pt <= tolerance_mm).sum() + (d_tp <= tolerance_mm).sum())
        out["surface_dice"][name] = close / (len(d_pt) + len(d_tp))
    return out


def _build_loss(name: str) -> torch.nn.Module:
    """The MONAI loss for `name`; targets arrive as (N, 1, *S) indices (to_onehot_y)."""
    from monai.losses import DiceCELoss, DiceLoss, FocalLoss

    if name == "dice":
        return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    if name == "dice_ce":
        return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    return FocalLoss(include_background=True, to_onehot_y=True, use_softmax=True, gamma=2.0)


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the box around the True voxels plus `margin` (clipped), or None if none."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if len(hits) == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface_distances(pred: np.ndarray, truth: np.ndarray,
                       spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of pred to truth's surface, and back.

    Both masks must be non-empty. A KD-tree over the scaled surface coordinates gives the
    same exact Euclidean distances as a distance transform, at a cost set by the surfaces.
    """
    scale = np.asarray(spacing)
    points = []
    for mask in (pred, truth):
        surface = mask & ~binary_erosion(mask)  # border_value 0: voxels at the array edge are surface
        points.append(np.argwhere(surface) * scale)
    d_pt = cKDTree(points[1]).query(points[0], k=1)[0]
    d_tp = cKDTree(points[0]).query(points[1], k=1)[0]
    return d_pt, d_tp


def _class_means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-class means over the cases in each row of idx (B, n), skipping NaN: (B, K-1)."""
    return _nanmean(values[idx].transpose(0, 2, 1))


def _bootstrap(values: dict[str, np.ndarray], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Per-class means of every metric over n_boot resamples of the cases: each (n_boot, K-1)."""
    n, k = next(iter(values.values())).shape
    if n == 0 or n_boot == 0:
        return {m: np.full((n_boot, k), np.nan) for m in values}
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_VALUES // (n * max(k, 1)))
    parts: dict[str, list[np.ndarray]] = {m: [] for m in values}
    for start in range(0, n_boot, block):
        idx = rng.integers(0, n, size=(min(block, n_boot - start), n))
        for m, v in values.items():
            parts[m].append(_class_means(v, idx))
    return {m: np.concatenate(p) for m, p in parts.items()}
