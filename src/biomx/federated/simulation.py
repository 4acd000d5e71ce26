"""The federation in one process, deterministic: every site's client and the server's strategy
(the same classes as in `biomx federate run`), called in turn without gRPC. For quick
experiments and for checking what the aggregation does; the run folder is the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

from biomx.engine.logging import console
from biomx.experiment import Prepared, prepare
from biomx.federated.client import SiteClient
from biomx.federated.config import FederatedConfig, site_config
from biomx.federated.rounds import Rounds
from biomx.federated.server import finish, make_strategy, open_rounds
from biomx.federated.sites import site_rows

OK = Status(code=Code.OK, message="")


def site_clients(fed: FederatedConfig, cfg: Any, p: Prepared, overrides: list[str] | None = None) -> list[SiteClient]:
    """Every site's client; sites cut from one experiment share its prepared data."""
    clients = []
    for k in range(fed.n_sites):
        mine = p if isinstance(fed.sites, int) else prepare(site_config(fed, cfg, k, overrides))
        clients.append(SiteClient(mine, fed, k, site_rows(fed, mine.splits, mine.data.labels, k)))
    return clients


def simulate(fed: FederatedConfig, cfg: Any, resume: str | Path | None = None,
             overrides: list[str] | None = None) -> Path:  # fmt: skip
    """Run `fed.rounds` rounds in this process; returns the run folder."""
    p = prepare(cfg)
    clients = site_clients(fed, cfg, p, overrides)
    if fed.secure_aggregation is not None:  # Flower's Message API: SecAgg+ (docs/federated.md)
        from biomx.federated.local_grid import simulate_secure

        return simulate_secure(fed, p, resume, clients)
    rounds, weights = open_rounds(fed, p, resume)
    return run_rounds(fed, rounds, weights, clients)


def run_rounds(fed: FederatedConfig, rounds: Rounds, weights: list[np.ndarray], clients: list[SiteClient]) -> Path:
    """The rounds not done yet, each client in turn, then the global model scored (`finish`)."""
    strategy = make_strategy(fed, rounds, weights)
    parameters = ndarrays_to_parameters(weights)
    for server_round in range(1, fed.rounds - rounds.done + 1):
        config: dict[str, Any] = {"server_round": rounds.done + server_round, **rounds.site_budgets()}  # DP sites
        if fed.strategy == "fedprox":
            config["proximal_mu"] = fed.proximal_mu
        fits = []
        for client in clients:
            new, n, metrics = client.fit(parameters_to_ndarrays(parameters), config)
            fits.append((None, FitRes(OK, ndarrays_to_parameters(new), n, metrics)))
        parameters, _ = strategy.aggregate_fit(server_round, fits, [])
        evals = []
        for client in clients:
            loss, n, metrics = client.evaluate(parameters_to_ndarrays(parameters), config)
            if n:
                evals.append((None, EvaluateRes(OK, loss, n, metrics)))
        strategy.aggregate_evaluate(server_round, evals, [])
    console.print(f"simulated {fed.rounds} rounds of {len(clients)} site(s)")
    return finish(rounds)
