"""What the tasks with one prediction row per sample share (classification, regression): test
evaluation and prediction through `biomx.batched`, and report sections and explanation hooks
answered by the task's own modules (`report_sections`, and an `explain` module with
pick_examples, attribution_target, caption, class_views, pick_explained, describe,
attribution_text and output_for; see tasks/classification/explain.py)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from biomx import batched
from biomx.config import ExperimentConfig
from biomx.data.samples import Samples
from biomx.protocols import Modality, PredictRequest, TestRun


class RowTaskHooks:
    """Mixed into a task dataclass that sets `explain` (its module) and `sections` (its report)."""

    explain: ClassVar[ModuleType]
    sections: ClassVar[Callable[[dict[str, Any]], list[dict]]]

    def evaluate_test(self, run: TestRun) -> tuple[dict[str, Any] | None, list[dict]]:
        return batched.evaluate_test(self, run)

    def predict(self, request: PredictRequest) -> dict[str, list]:
        return batched.predict(self, request)

    def report_sections(self, evaluation: dict[str, Any]) -> list[dict]:
        return type(self).sections(evaluation)

    # Explanation hooks: which samples and outputs a modality's explanations show.
    def pick_examples(self, preds: np.ndarray, targets: np.ndarray, n: int) -> list[int]:
        return self.explain.pick_examples(self, preds, targets, n)

    def attribution_target(self, preds: np.ndarray) -> tuple[np.ndarray, Any]:
        return self.explain.attribution_target(self, preds)

    def caption(self, target: np.ndarray, pred: np.ndarray, predicted: Any) -> str:
        return self.explain.caption(self, target, pred, predicted)

    def class_views(self, preds: np.ndarray, targets: np.ndarray) -> list:
        return self.explain.class_views(self, preds, targets)

    def pick_explained(self, preds: np.ndarray, targets: np.ndarray, n: int) -> list[tuple[int, str, int]]:
        return self.explain.pick_explained(self, preds, targets, n)

    def describe(self, column: int, pred: np.ndarray, target: np.ndarray) -> tuple[str, float, object, str]:
        return self.explain.describe(self, column, pred, target)

    def attribution_text(self) -> tuple[str, str]:
        return self.explain.attribution_text(self)

    def output_for(self, class_name: str | None) -> tuple[int, float, str]:
        return self.explain.output_for(self, class_name)


# TaskType members a row task takes as they are: the samples and datasets are the modality's.


def check_config(cfg: ExperimentConfig, modality: Modality) -> None:
    """Nothing beyond the config schema."""


def load(cfg: ExperimentConfig, modality: Modality) -> Samples:
    return modality.load(cfg)


def build_datasets(cfg: ExperimentConfig, modality: Modality, samples: Samples, targets: torch.Tensor,
                   splits: dict[str, np.ndarray]) -> tuple[dict[str, Dataset], dict[str, Any], dict[str, Any]]:
    return modality.build_datasets(samples, targets, splits, cfg)
