"""The `tune:` section: a hyperparameter search over dotted config keys (docs/tuning.md).

A plain pydantic model with the same rules as every `biomx.config` section (unknown keys
forbidden, no inf/nan); it does not import `biomx.config`, which imports it.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from biomx.plugins import refuse_unknown_keys

# How a space entry samples: {log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]},
# {int_log: [low, high]} or {choice: [a, b, ...]}. Values only: no code is evaluated from a config.
KINDS = ("log_uniform", "uniform", "int", "int_log", "choice")


def _check_entry(key: str, entry: Any) -> dict[str, list[Any]]:
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise ValueError(f"{key}: expected one of {{{': [...], '.join(KINDS)}: [...]}}, got {entry!r}"[:200])
    kind, values = next(iter(entry.items()))
    if not isinstance(values, list) or not values:
        raise ValueError(f"{key}: {kind} needs a list, e.g. {kind}: [1, 2]")
    if kind == "choice":
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise ValueError(f"{key}: choice takes plain values (numbers, strings, booleans, null)")
        return entry
    values = [_number(v) for v in values]  # YAML reads 1e-4 (no dot) as a string
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numbers or values[0] >= values[1]:
        raise ValueError(f"{key}: {kind} takes [low, high] with low < high, got {values!r}")
    if kind.startswith("int") and not all(isinstance(v, int) for v in values):
        raise ValueError(f"{key}: {kind} takes whole numbers, got {values!r}")
    if kind in ("log_uniform", "int_log") and values[0] <= 0:
        raise ValueError(f"{key}: {kind} needs low > 0, got {values!r}")
    return {kind: values}


def _number(value: Any) -> Any:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


class TuneConfig(BaseModel):
    """`biomx tune CONFIG`: `trials` trials, each a normal run with `space` applied as overrides,
    scored by the best per-epoch `metric`; stored in an Optuna study so that it resumes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    trials: Annotated[int, Field(ge=1, le=100_000)] = 20  # finished (complete or pruned) trials wanted
    metric: str | None = None  # a per-epoch validation metric (val_auroc, val_loss...); None: train.monitor
    direction: Literal["maximize", "minimize"] | None = None  # None: from the metric's name (loss: minimize)
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    # None: Optuna's journal file in the tune folder (several processes on one machine);
    # a database URL (postgresql+psycopg://user@host/db): workers on several machines (docs/tuning.md).
    storage: str | None = None
    study: str | None = None  # the study name; None: the experiment's name
    seed: int = 0  # the sampler's seed (extra workers add their process id)
    space: dict[str, dict[str, list[Any]]]  # dotted config key -> {kind: values}

    @field_validator("space", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("expected at least one entry, e.g. train.optimizer.lr: {log_uniform: [1e-4, 1e-2]}")
        return {str(k): _check_entry(str(k), v) for k, v in value.items()}

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("val_"):
            raise ValueError(f"{value!r}: a per-epoch validation metric (val_loss, val_auroc, ...)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        return refuse_unknown_keys(value, list(cls.model_fields))
