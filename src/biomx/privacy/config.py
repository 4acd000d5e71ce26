"""The `train.privacy:` section: train with DP-SGD to a target (epsilon, delta).

A plain pydantic model with the same rules as every `biomx.config` section (unknown keys
forbidden, no inf/nan); it does not import `biomx.config`, which imports it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from biomx.plugins import refuse_unknown_keys


class PrivacyConfig(BaseModel):
    """Differentially private training (docs/privacy.md): Poisson sampling, per-sample gradient
    clipping to `max_grad_norm`, Gaussian noise calibrated so that the whole training spends at
    most `epsilon` (at `delta`) under `accountant`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    epsilon: Annotated[float, Field(gt=0.0, le=100.0)]  # the target budget of the whole training
    delta: Annotated[float, Field(gt=0.0, lt=1.0)] = 1e-5  # keep below 1 / training samples
    max_grad_norm: Annotated[float, Field(gt=0.0)] = 1.0  # per-sample gradient clipping bound
    accountant: Literal["rdp", "prv"] = "rdp"  # calibrates the noise; the ledger shows both
    # Also train the same model without DP on the same split (RUN/without_privacy/): the report
    # shows the utility cost beside the private model.
    baseline: bool = True
    # BatchNorm mixes the samples of a batch (no per-sample gradient): convert it to GroupNorm, or refuse.
    batchnorm: Literal["convert", "refuse"] = "convert"
    # The budget book: epsilon spent by every DP run on the same training data adds up there.
    # None: the default location (docs/privacy.md); a path: a JSON file shared by those runs.
    budget_file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        return refuse_unknown_keys(value, list(cls.model_fields))  # `PrivacyConfig | None` hides the section
