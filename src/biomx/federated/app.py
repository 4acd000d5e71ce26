"""Secure aggregation (`federated.secure_aggregation`): the federation as Flower Message-API apps.
The ServerApp runs Flower's DefaultWorkflow with SecAgg+ as its fit workflow, so the strategy
(the same recording FedAvg/FedProx as without it) only ever sees the sites' masked sum; the
ClientApp is the same `SiteClient` behind Flower's `secaggplus_mod`, which masks its update.

`server_app` and `client_app` are what a SuperLink and SuperNodes load by reference
("biomx.federated.app:server_app"); their run config names the federation file (`run_config`).
`biomx federate simulate` runs the same two apps in one process (`biomx.federated.local_grid`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Context
from flwr.client import Client
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

if TYPE_CHECKING:  # a ClientApp process loads this module for every message: torch only where needed
    from biomx.experiment import Prepared
    from biomx.federated.config import FederatedConfig

# The run config keys a deployed run carries (strings: Flower's run config holds scalars only).
FEDERATION, OVERRIDES, RESUME = "federation", "overrides", "resume"


def secagg_workflow(fed: FederatedConfig) -> SecAggPlusWorkflow:
    """Flower's SecAgg+ fit workflow with the federation's settings."""
    s = fed.secure_aggregation
    if s is None:
        raise ValueError("secure_aggregation is off")
    return SecAggPlusWorkflow(num_shares=s.num_shares, reconstruction_threshold=s.reconstruction_threshold,
                              max_weight=s.max_weight, clipping_range=s.clipping_range,
                              quantization_range=s.quantization_range, timeout=fed.round_timeout_s)  # fmt: skip


def keep_dtypes(strategy: Strategy, template: list[np.ndarray]) -> None:
    """SecAgg+ hands the strategy its dequantised sum as float64 arrays; cast them back to the
    model's own dtypes (float32 weights, integer batch counters rounded) before the strategy
    averages and records them, so a round checkpoint is the same as without secure aggregation."""
    inner = strategy.aggregate_fit

    def aggregate_fit(server_round: int, results: list, failures: list) -> Any:
        for _, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            typed = [np.rint(a).astype(t.dtype) if t.dtype.kind in "iub" else a.astype(t.dtype)
                     for a, t in zip(arrays, template, strict=True)]  # fmt: skip
            res.parameters = ndarrays_to_parameters(typed)
        return inner(server_round, results, failures)

    strategy.aggregate_fit = aggregate_fit  # type: ignore[method-assign]


def run_server(fed: FederatedConfig, p: Prepared, resume: str | Path | None, grid: Grid, context: Context) -> Path:
    """The rounds not done yet with SecAgg+ over `grid`, recorded and finished as without it
    (`biomx.federated.server`); returns the run folder."""
    from biomx.federated.server import finish, make_strategy, open_rounds

    rounds, weights = open_rounds(fed, p, resume)
    left = fed.rounds - rounds.done
    if left > 0:
        strategy = make_strategy(fed, rounds, weights)
        keep_dtypes(strategy, weights)
        config = ServerConfig(num_rounds=left, round_timeout=fed.round_timeout_s)
        DefaultWorkflow(fit_workflow=secagg_workflow(fed))(grid, LegacyContext(context, config=config, strategy=strategy))
    return finish(rounds)


def site_app(client_for: Callable[[int], Client]) -> ClientApp:
    """A ClientApp whose node `node_config["site"]` (1-based) is `client_for(site)`, behind SecAgg+."""

    def client_fn(context: Context) -> Client:
        return client_for(int(context.node_config["site"]))

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def run_config(federation: str | Path, overrides: list[str], resume: str | None) -> dict[str, str]:
    """What a deployed run needs to find its federation (`server_app` and `client_app` read it)."""
    return {FEDERATION: str(Path(federation).resolve()), OVERRIDES: json.dumps(overrides), RESUME: resume or ""}


def _load(values: Mapping[str, Any]) -> tuple[FederatedConfig, Any, list[str], str | None]:
    """(federation, experiment, overrides, resume) from a run config or a SuperNode's node config."""
    from biomx.federated.config import load_federation

    overrides = json.loads(str(values.get(OVERRIDES) or "[]"))
    fed, cfg = load_federation(str(values[FEDERATION]), overrides)
    return fed, cfg, overrides, str(values.get(RESUME) or "") or None


def _deployed_client(context: Context) -> Client:
    """One site in a SuperNode's ClientApp process: its own data, as `biomx federate client` builds
    it. The site's federation file is its SuperNode's (node config), else the server's (run config)."""
    from biomx.experiment import prepare
    from biomx.federated.client import SiteClient
    from biomx.federated.config import site_config
    from biomx.federated.sites import site_rows

    fed, cfg, overrides, _ = _load(context.node_config if FEDERATION in context.node_config else context.run_config)
    k = int(context.node_config["site"]) - 1
    p = prepare(site_config(fed, cfg, k, overrides))
    return SiteClient(p, fed, k, site_rows(fed, p.splits, p.data.labels, k)).to_client()


server_app = ServerApp()


@server_app.main()
def _deployed_server(grid: Grid, context: Context) -> None:
    from biomx.experiment import prepare

    fed, cfg, _, resume = _load(context.run_config)
    run_server(fed, prepare(cfg), resume, grid, context)


client_app = ClientApp(client_fn=_deployed_client, mods=[secaggplus_mod])
