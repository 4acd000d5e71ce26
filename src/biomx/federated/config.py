"""The federation file: which biomx experiment the sites train, how the sites get their data,
and how the rounds run. Its own YAML file (an experiment config stays a plain experiment that
`biomx train` runs alone, which is the pooled baseline); unknown keys are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    fed.experiment = str((path.parent / fed.experiment).resolve())
    return fed, load_config(fed.experiment, overrides)


def site_config(fed: FederatedConfig, cfg: ExperimentConfig, site: int, overrides: list[str] | None = None
                ) -> ExperimentConfig:  # fmt: skip
    """The experiment as site `site` (0-based) trains it: its own overrides, if it has data of its own."""
    if isinstance(fed.sites, int):
        return cfg
    return load_config(fed.experiment, [*(overrides or []), *fed.sites[site].overrides])
