"""The federation file: which biomx experiment the sites train, how the sites get their data,
and how the rounds run. Its own YAML file (an experiment config stays a plain experiment that
`biomx train` runs alone, which is the pooled baseline); unknown keys are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from biomx.config import ExperimentConfig, format_validation_error, load_config, read_yaml
from biomx.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PartitionConfig(Section):
    """How `sites: N` cuts the experiment's training and validation rows into N sites (the test
    split stays whole and shared; docs/federated.md has the rule)."""

    rule: Literal["label_skew", "contiguous"] = "label_skew"
    skew: float = Field(0.8, ge=0.0, le=1.0)  # label_skew: 0 = every site has the same label mix


class SiteConfig(Section):
    """A site with data of its own: overrides of the experiment config (e.g. its `data.path`)."""

    overrides: list[str] = Field(default_factory=list)


class SecureAggregationConfig(Section):
    """SecAgg+ (Flower's `SecAggPlusWorkflow` and `secaggplus_mod`): each site masks its update so
    that the server learns only the sum (docs/federated.md, "Secure aggregation")."""

    # Key shares per site: an integer > 2, or a float, that share of the round's sites (1.0: all).
    num_shares: int | float = Field(1.0, gt=0)
    # Shares that rebuild a key: an integer below num_shares, or a float, that share of num_shares.
    reconstruction_threshold: int | float = Field(0.67, gt=0)
    clipping_range: float = Field(8.0, gt=0)  # each weight x rows/max_weight is clipped to +-this before quantising
    quantization_range: int = Field(2**22, ge=2, lt=2**32)  # integer levels over [-clipping_range, clipping_range]
    max_weight: float = Field(1000.0, gt=0)  # a site's weight is its training rows / max_weight (keep it >= the largest)

    @model_validator(mode="after")
    def _shares(self) -> SecureAggregationConfig:
        n, t = self.num_shares, self.reconstruction_threshold
        if isinstance(n, float) and n > 1:
            raise ValueError("num_shares: a share of the sites is at most 1.0; an integer is a count (> 2)")
        if isinstance(n, int) and n == 2:
            raise ValueError("num_shares: a count must be more than 2 (or a share of the sites such as 1.0)")
        if isinstance(t, float) and t > 1:
            raise ValueError("reconstruction_threshold: a share of num_shares is at most 1.0")
        if isinstance(t, int) and isinstance(n, int) and n > 2 and t >= n:
            raise ValueError(f"reconstruction_threshold: {t} must be less than num_shares ({n})")
        return self


class FederatedConfig(Section):
    experiment: str  # the biomx experiment config every site trains (relative to this file)
    sites: int | list[SiteConfig] = 3  # a count (cut by `partition`) or each site's own data
    partition: PartitionConfig = PartitionConfig()
    rounds: int = Field(3, ge=1, le=10_000)
    local_epochs: int = Field(1, ge=1, le=1000)
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(0.0, ge=0.0)  # fedprox: mu/2 ||w - w_global||^2 added to each site's loss
    min_clients: int | None = Field(None, ge=1)  # sites a round needs (default: every site)
    round_timeout_s: float = Field(600.0, gt=0)  # a site that has not answered by then is dropped for the round
    address: str = "127.0.0.1"
    port: int = Field(8089, ge=1, le=65535)
    seed: int = 0
    secure_aggregation: SecureAggregationConfig | None = None  # `true` for the defaults

    @field_validator("secure_aggregation", mode="before")
    @classmethod
    def _switch(cls, value: object) -> object:
        """`secure_aggregation: true` (the defaults) or `false` (off), besides a mapping."""
        if isinstance(value, bool):
            return {} if value else None
        return value

    @property
    def n_sites(self) -> int:
        return self.sites if isinstance(self.sites, int) else len(self.sites)

    @property
    def needed(self) -> int:
        return self.min_clients or self.n_sites


def load_federation(path: str | Path, overrides: list[str] | None = None) -> tuple[FederatedConfig, ExperimentConfig]:
    """(the federation, its experiment): `overrides` apply to the experiment (`--set`).

    Raises:
        ConfigError: one line per problem, naming the key.
    """
    path = Path(path)
    raw = read_yaml(path)
    try:
        fed = FederatedConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {format_validation_error(err, FederatedConfig)}") from None
    if isinstance(fed.sites, int) and fed.sites < 2:
        raise ConfigError(f"{path}: sites: a federation needs at least 2 sites; got {fed.sites}")
    if fed.needed > fed.n_sites:
        raise ConfigError(f"{path}: min_clients: {fed.min_clients} is more than the {fed.n_sites} sites")
    secure = fed.secure_aggregation
    if secure is not None and isinstance(secure.num_shares, int) and secure.num_shares > fed.n_sites:
        raise ConfigError(f"{path}: secure_aggregation.num_shares: {secure.num_shares} is more than the "
                          f"{fed.n_sites} sites")  # fmt: skip
    fed.experiment = str((path.parent / fed.experiment).resolve())
    cfg = load_config(fed.experiment, overrides)
    if cfg.train.fairness is not None:  # the sites' trainers would silently ignore it
        raise ConfigError(f"{fed.experiment}: train.fairness: not supported in a federation yet (each site "
                          "trains through its own loop); remove it, and measure subgroups with eval.subgroups")
    return fed, cfg


def site_config(fed: FederatedConfig, cfg: ExperimentConfig, site: int, overrides: list[str] | None = None
                ) -> ExperimentConfig:  # fmt: skip
    """The experiment as site `site` (0-based) trains it: its own overrides, if it has data of its own."""
    if isinstance(fed.sites, int):
        return cfg
    return load_config(fed.experiment, [*(overrides or []), *fed.sites[site].overrides])
