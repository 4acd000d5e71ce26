"""The federation's server: FedAvg or FedProx (Flower's strategies), each aggregated round
checkpointed in the run folder (`biomx.federated.rounds`), resume from the last round, and at the
end the global model written and scored as a normal biomx run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flwr as fl
import numpy as np
from flwr.common import Metrics, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, FedProx

from biomx.engine.logging import console
from biomx.errors import BiomxError
from biomx.experiment import Prepared, evaluate_run, prepare
from biomx.federated.client import DP_PREFIX
from biomx.federated.config import FederatedConfig
from biomx.federated.rounds import Rounds, run_folder, write_run_files
from biomx.federated.weights import build_global_model, get_weights


def weighted_mean(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Each metric's mean over the sites that report it, weighted by their number of rows (not a
    site's privacy ledger, `dp_*`: the server records it per site)."""
    keys = sorted({k for _, m in metrics for k in m if not k.startswith(DP_PREFIX)})
    out: Metrics = {}
    for key in keys:
        pairs = [(n, float(m[key])) for n, m in metrics if key in m and n > 0]  # type: ignore[arg-type]
        if pairs and sum(n for n, _ in pairs):
            out[key] = sum(n * v for n, v in pairs) / sum(n for n, _ in pairs)
    return out


def make_strategy(fed: FederatedConfig, rounds: Rounds, initial: list[np.ndarray]) -> FedAvg:
    """Flower's FedAvg or FedProx, recording every aggregated round in `rounds`. Round numbers
    continue after a resume (Flower counts from 1 again: `rounds.done` is added)."""
    base = FedProx if fed.strategy == "fedprox" else FedAvg

    class Recording(base):  # type: ignore[valid-type, misc]
        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, Metrics]:
            parameters, metrics = super().aggregate_fit(server_round, results, failures)
            if parameters is not None:
                rnd = rounds.done + server_round
                rounds.record_sites(rnd, [res.metrics for _, res in results])  # DP sites: privacy_sites.json
                rounds.record_fit(rnd, parameters_to_ndarrays(parameters), len(results), len(failures), metrics)
                console.print(f"round {rnd}: {len(results)} sites trained, {len(failures)} dropped")
            return parameters, metrics

        def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[Any, Metrics]:
            results = [(proxy, res) for proxy, res in results if res.num_examples > 0]  # sites without val rows
            if not results:
                return None, {}
            loss, metrics = super().aggregate_evaluate(server_round, results, failures)
            rounds.record_evaluate(rounds.done + server_round, loss, metrics)
            return loss, metrics

    kwargs: dict[str, Any] = {"proximal_mu": fed.proximal_mu} if fed.strategy == "fedprox" else {}
    return Recording(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=fed.needed, min_evaluate_clients=fed.needed,
        min_available_clients=fed.needed, initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=lambda r: {"server_round": rounds.done + r, **rounds.site_budgets()},
        fit_metrics_aggregation_fn=weighted_mean, evaluate_metrics_aggregation_fn=weighted_mean, **kwargs,
    )  # fmt: skip


def open_rounds(fed: FederatedConfig, p: Prepared, resume: str | Path | None) -> tuple[Rounds, list[np.ndarray]]:
    """The run folder (new, or the one to resume) and the weights the next round starts from."""
    if resume is None:
        run_dir = run_folder(p)
        if (run_dir / "run.json").exists():
            raise BiomxError(f"{run_dir}: already holds a run; use --resume {run_dir} or another output.name")
        write_run_files(run_dir, p, fed)
        console.print(f"run: {run_dir}  ({', '.join(f'{k} {len(v)}' for k, v in p.splits.items())})")
    else:
        run_dir = Path(resume)
        if not (run_dir / "run.json").is_file():
            raise BiomxError(f"{run_dir}: not a federated run (no run.json); start a new one without --resume")
    rounds = Rounds(run_dir, p, fed)
    weights = rounds.resume()
    if weights is None:
        weights = get_weights(build_global_model(p, fed.seed))
    elif rounds.done:
        console.print(f"resuming after round {rounds.done} of {fed.rounds}")
    return rounds, weights


def finish(rounds: Rounds) -> Path:
    """The last round's global model as best.safetensors, scored on the test split (report)."""
    rounds.finish()
    evaluate_run(rounds.run_dir)
    return rounds.run_dir


def serve(fed: FederatedConfig, cfg: Any, resume: str | Path | None = None) -> Path:
    """Run the federation's server until `fed.rounds` rounds are done; returns the run folder."""
    p = prepare(cfg)
    rounds, weights = open_rounds(fed, p, resume)
    left = fed.rounds - rounds.done
    if left > 0:
        strategy = make_strategy(fed, rounds, weights)
        fl.server.start_server(server_address=f"{fed.address}:{fed.port}", strategy=strategy,
                               config=fl.server.ServerConfig(num_rounds=left, round_timeout=fed.round_timeout_s))  # fmt: skip
    return finish(rounds)
