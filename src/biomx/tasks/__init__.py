"""Tasks: what a model's outputs mean, each a plug-in in its own folder behind
`biomx.protocols.TaskType` (how it is configured and built) and `Task` (the built task).

`classification` covers binary, multiclass and multilabel problems; `regression` one or
several continuous targets; `segmentation` labels every pixel or voxel of images and volumes.
"""

from __future__ import annotations

from typing import Any

from biomx.plugins import Registry
from biomx.protocols import Task, TaskType

TASKS = Registry("task", "task.kind", {
    "classification": "biomx.tasks.classification",
    "detection": "biomx.tasks.detection",
    "regression": "biomx.tasks.regression",
    "segmentation": "biomx.tasks.segmentation",
    "survival": "biomx.tasks.survival",
})  # fmt: skip


def get_task(name: str) -> TaskType:
    """The task type registered as `name` (ConfigError naming the closest name otherwise)."""
    return TASKS.get(name)


def register_task(name: str, plugin: TaskType) -> None:
    TASKS.register(name, plugin)


def task_names() -> list[str]:
    return TASKS.names()


def quick_metric_names(name: str) -> tuple[str, ...]:
    """The validation metrics a task reports each epoch (for train.monitor)."""
    return tuple(get_task(name).quick_metric_names)


def task_from_info(info: dict[str, Any]) -> Task:
    """Rebuild a run's task from the "task" entry of its run.json (or checkpoint)."""
    name = info.get("name")
    if name is None:  # runs written before tasks were named: the kind told them apart
        name = info["kind"] if info["kind"] in ("regression", "segmentation") else "classification"
    return get_task(name).from_info(info)


__all__ = ["TASKS", "get_task", "quick_metric_names", "register_task", "task_from_info", "task_names"]
