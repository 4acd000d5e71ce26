"""`task:` for survival (task.kind: survival): right-censored time-to-event targets."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from biomx.config import PositiveFloat, TaskConfig


class SurvivalConfig(TaskConfig):
    kind: Literal["survival"] = "survival"
    # cox: DeepSurv, one log-risk per sample (Cox partial likelihood); logistic_hazard: one
    # hazard logit per time bin (Kvamme & Borgan 2021).
    model: Literal["cox", "logistic_hazard"] = "cox"
    ties: Literal["efron", "breslow"] = "efron"  # cox: how tied event times enter the likelihood
    # logistic_hazard: number of time bins, cut at quantiles of the training split's event times
    bins: Annotated[int, Field(ge=2, le=500)] = 20
    # Times (in the data's time unit) at which to report survival, time-dependent AUC and write
    # `survival_at_<h>` in predictions; default: the quartiles of the training event times.
    horizons: Annotated[list[PositiveFloat], Field(min_length=1, max_length=20)] | None = None
    tau: PositiveFloat | None = None  # Uno's C truncation time; default: last horizon
    time_unit: Annotated[str, Field(min_length=1, max_length=20)] | None = None  # e.g. "days", for axes

    @field_validator("horizons")
    @classmethod
    def _increasing(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"horizons must be strictly increasing, got {value}")
        return value
