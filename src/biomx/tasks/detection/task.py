"""Detection: boxes (and a class per box) in 2D images and 3D volumes, with RetinaNet.

The model (`biomx.models.detection.retinanet`) returns per class and anchor the class's logit, the
box regression, the anchor box and its feature-map level, (B, C, A, 4*D + 2). Targets are the patch's true boxes,
padded to a fixed count, (B, M, 2*D + 1): corners in the patch's voxels and the class index
(-1 = padding). So the Trainer keeps plain tensors and this task does what MONAI's
`RetinaNetDetector` does around the network: ATSS matching of anchors to boxes, hard-negative
sampling, the classification and box-regression losses (`compute_loss`), and the box decoding,
score threshold and non-maximum suppression at inference (`postprocess_detections`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from biomx.engine import distributed as dist
from biomx.errors import ConfigError, DataError
from biomx.protocols import PredictRequest, TestRun

DETECTION_QUICK_METRICS = ("ap50",)


class _Head(nn.Module):
    """What `RetinaNetDetector` reads of a network (its attributes); the network itself lives in
    the model, so this one is never called."""

    def __init__(self, spatial_dims: int, num_classes: int, num_anchors: int):
        super().__init__()
        self.spatial_dims, self.num_classes, self.num_anchors = spatial_dims, num_classes, num_anchors
        self.cls_key, self.box_reg_key, self.size_divisible = "classification", "box_regression", 1


def make_detector(spatial_dims: int, num_classes: int, num_anchors: int, *, samples_per_image: int,
                  positive_fraction: float, score_threshold: float, nms_iou: float,
                  detections_per_image: int, atss_candidates: int = 4, box_loss: str = "smooth_l1",
                  cls_loss: str = "bce") -> Any:  # fmt: skip
    """MONAI's RetinaNetDetector around a stand-in network: ATSS matcher (`atss_candidates` anchors
    per level and box), hard-negative sampler, the classification loss (`bce`, MONAI's default, or
    `focal`, gamma 2) and the box loss (`smooth_l1` on encoded deltas, MONAI's default, or `giou` on
    decoded boxes, which scores the box's overlap itself), and the box selector for inference."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    class Detector(RetinaNetDetector):
        def compute_anchor_matched_idxs(self, anchors: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
                                        num_anchor_locs_per_level: Any) -> list[torch.Tensor]:  # fmt: skip
            """MONAI's, for the ATSS matcher only: its check for torchvision's matcher needs torchvision."""
            out = []
            for a, t in zip(anchors, targets, strict=True):
                if t["boxes"].numel() == 0:
                    out.append(torch.full((a.size(0),), -1, dtype=torch.int64, device=a.device))
                    continue
                out.append(self.proposal_matcher(t["boxes"].to(a.device), a, num_anchor_locs_per_level,
                                                 self.num_anchors_per_loc)[1])  # fmt: skip
            return out

    shapes = [[8.0] * spatial_dims] * num_anchors  # only their number matters here
    detector = Detector(_Head(spatial_dims, num_classes, num_anchors),
                        AnchorGeneratorWithAnchorShape((1,), shapes))  # fmt: skip
    detector.set_atss_matcher(num_candidates=atss_candidates, center_in_gt=False)
    if box_loss == "giou":
        from monai.losses.giou_loss import BoxGIoULoss

        detector.set_box_regression_loss(BoxGIoULoss(reduction="mean"), encode_gt=False, decode_pred=True)
    if cls_loss == "focal":
        from monai.losses import FocalLoss

        detector.set_cls_loss(FocalLoss(reduction="mean", gamma=2.0))
    detector.set_hard_negative_sampler(batch_size_per_image=samples_per_image, positive_fraction=positive_fraction,
                                       pool_size=20, min_neg=16)  # fmt: skip
    detector.set_box_selector_parameters(score_thresh=score_threshold, topk_candidates_per_level=1000,
                                         nms_thresh=nms_iou, detections_per_img=detections_per_image)  # fmt: skip
    return detector


@dataclass
class DetectionTask:
    """A detection problem: box classes, the detector's training and inference settings."""

    classes: list[str]
    spatial_dims: int
    num_anchors: int  # anchor shapes per location
    patch_size: list[int]  # training and validation patches (what quick_metrics decodes)
    boxes_from: str = "auto"
    samples_per_image: int = 64
    positive_fraction: float = 0.3
    score_threshold: float = 0.05
    nms_iou: float = 0.22
    detections_per_image: int = 100
    fusion: str = "nms"
    atss_candidates: int = 4
    box_loss: str = "smooth_l1"
    cls_loss: str = "bce"
    kind: ClassVar[str] = "detection"
    name: ClassVar[str] = "detection"
    threshold: ClassVar[None] = None
    headline: ClassVar[tuple[str, ...]] = ("froc_mean", "map_50", "map_10")
    _detector: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.classes, (list, tuple)) or not self.classes or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task.classes: expected unique names of the box classes, got {self.classes!r}")
        self.classes = [str(c) for c in self.classes]
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"detection: 2D or 3D data, got {self.spatial_dims}D")

    @property
    def out_dim(self) -> int:
        """The model's classes: one logit per box class and anchor."""
        return len(self.classes)

    @property
    def detector(self) -> Any:
        if self._detector is None:
            self._detector = make_detector(self.spatial_dims, len(self.classes), self.num_anchors,
                                           samples_per_image=self.samples_per_image,
                                           positive_fraction=self.positive_fraction,
                                           score_threshold=self.score_threshold, nms_iou=self.nms_iou,
                                           detections_per_image=self.detections_per_image,
                                           atss_candidates=self.atss_candidates, box_loss=self.box_loss,
                                           cls_loss=self.cls_loss)  # fmt: skip
        return self._detector

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "spatial_dims": self.spatial_dims,
                "num_anchors": self.num_anchors, "patch_size": self.patch_size, "boxes_from": self.boxes_from,
                "samples_per_image": self.samples_per_image, "positive_fraction": self.positive_fraction,
                "score_threshold": self.score_threshold, "nms_iou": self.nms_iou,
                "detections_per_image": self.detections_per_image, "fusion": self.fusion,
                "atss_candidates": self.atss_candidates, "box_loss": self.box_loss,
                "cls_loss": self.cls_loss}  # fmt: skip

    # ------------------------------------------------------------------ outputs and targets

    def split(self, outputs: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]:
        """(head outputs as the detector reads them, anchors (A, 2D), anchor locations per level)."""
        c, d = len(self.classes), self.spatial_dims
        if outputs.ndim != 4 or outputs.shape[1] != c or outputs.shape[3] != 4 * d + 2:
            raise DataError(f"detection task: outputs {tuple(outputs.shape)} do not fit (N, {c}, anchors, "
                            f"{4 * d + 2}); check the model's out_dim")  # fmt: skip
        o = outputs.float()
        head = {"classification": o[..., 0].transpose(1, 2), "box_regression": o[:, 0, :, 1:1 + 2 * d]}
        # The anchors are constants the model appends to its output: detached, so that autograd does not
        # record anchor matching and box encoding (no parameter's gradient depends on them).
        anchors = o[0, 0, :, 1 + 2 * d:1 + 4 * d].detach()
        levels = o[0, 0, :, -1].round().long()
        per_level = torch.bincount(levels).tolist()
        return head, anchors, [n // self.num_anchors for n in per_level]

    def target_dicts(self, targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Padded (B, M, 2D + 1) targets -> the detector's [{"boxes", "labels"}] per image."""
        d2 = 2 * self.spatial_dims
        if targets.ndim != 3 or targets.shape[2] != d2 + 1:
            raise DataError(f"detection task: targets {tuple(targets.shape)} do not fit (N, boxes, {d2 + 1})")
        out = []
        for t in targets.float():
            keep = t[:, d2] >= 0
            out.append({"boxes": t[keep, :d2], "labels": t[keep, d2].long()})
        return out

    # ------------------------------------------------------------------ the Task protocol

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Classification (sampled anchors) + box regression (matched anchors) losses, float32."""
        head, anchors, per_level = self.split(outputs)
        losses = self.detector.compute_loss(head, self.target_dicts(targets.to(outputs.device)),
                                            [anchors] * len(outputs), per_level)  # fmt: skip
        return losses["classification"] + losses["box_regression"]

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """The raw columns: boxes are decoded per patch or window by `detect`."""
        return outputs.float()

    @torch.no_grad()
    def detect(self, outputs: torch.Tensor, size: list[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(boxes (N, 2D) in the input's voxels, scores, class indices) per image of a batch whose
        inputs were `size` voxels: decoded, thresholded and non-maximum suppressed."""
        head, anchors, per_level = self.split(torch.as_tensor(outputs))
        found = self.detector.postprocess_detections(head, [anchors] * len(head["classification"]),
                                                     [list(size)] * len(head["classification"]), per_level)
        return [(f["boxes"].double().numpy(), f["labels_scores"].double().numpy(), f["labels"].long().numpy())
                for f in found]  # fmt: skip

    def quick_metrics(self, predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """COCO mAP at IoU 0.5 over the validation patches (NaN without any true box)."""
        from biomx.tasks.detection.scoring import map_at

        predictions = np.asarray(predictions)
        if not np.isfinite(predictions).all():
            return {"ap50": float("nan")}
        d2 = 2 * self.spatial_dims
        size, found = list(self.patch_size), []
        for start in range(0, len(predictions), 16):
            found += self.detect(torch.from_numpy(predictions[start:start + 16]), size)
        truth = [(t[t[:, d2] >= 0, :d2], t[t[:, d2] >= 0, d2].astype(int)) for t in np.asarray(targets)]
        return {"ap50": map_at(found, truth, (0.5,))[0.5]}

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        """Whole test cases by sliding windows, boxes on each scan's grid (rank 0 only)."""
        from biomx.tasks.detection.evaluate import evaluate_cases

        return evaluate_cases(self, run) if dist.is_main() else (None, [])

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        from biomx.tasks.detection.report import metric_sections

        return metric_sections(evaluation)

    def predict(self, request: PredictRequest) -> dict[str, list]:
        """One row per box found (or one empty row per input without boxes)."""
        from biomx.tasks.detection.inference import predict_boxes

        if request.engine is not None:
            raise ConfigError(f"--engine {request.engine.name}: detection predicts each scan through sliding "
                              "windows, which the exported graph does not hold; use --engine torch")  # fmt: skip
        return predict_boxes(self, request)


SETTINGS = ("boxes_from", "samples_per_image", "positive_fraction", "score_threshold", "nms_iou",
            "detections_per_image", "fusion", "atss_candidates", "box_loss", "cls_loss")


def build_detection_task(classes: list[str], spatial_dims: int, num_anchors: int, patch_size: list[int],
                         cfg: Any = None, **settings: Any) -> DetectionTask:  # fmt: skip
    """A DetectionTask from the `task:` section (`cfg`) or from keyword settings (run.json)."""
    if cfg is not None:
        settings = {k: getattr(cfg, k) for k in SETTINGS}
    return DetectionTask(list(classes), int(spatial_dims), int(num_anchors), [int(p) for p in patch_size],
                         **{k: v for k, v in settings.items() if k in SETTINGS})
