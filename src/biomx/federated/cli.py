"""`biomx federate server|client|run|simulate|compare FEDERATION.yaml`: argparse only at import (the
`biomx` parser is built without torch or Flower); each command imports what it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from biomx.argtypes import positive_int


def _load(args: argparse.Namespace):  # noqa: ANN202  (FederatedConfig, ExperimentConfig)
    from biomx.plugins import import_extra

    import_extra("flwr", "biomx federate")  # Flower: the federated extra, one line when missing
    from biomx.federated.config import load_federation

    return load_federation(args.config, args.set)


def _cmd_server(args: argparse.Namespace) -> None:
    fed, cfg = _load(args)
    if fed.secure_aggregation is not None:  # Flower's SuperLink; the sites' SuperNodes connect to it
        from biomx.errors import BiomxError
        from biomx.federated.deploy import launch_secure

        if launch_secure(args.config, fed, args.set, args.resume, local_sites=False):
            raise BiomxError("federation: the SuperLink exited")
        return
    from biomx.federated.server import serve

    print(f"federated run: {serve(fed, cfg, args.resume)}")


def _cmd_client(args: argparse.Namespace) -> None:
    fed, cfg = _load(args)
    if fed.secure_aggregation is not None:  # this site's SuperNode (docs/federated.md)
        from biomx.errors import BiomxError
        from biomx.federated.deploy import run_site_secure

        if not 1 <= args.site <= fed.n_sites:
            raise BiomxError(f"--site: the federation has sites 1 to {fed.n_sites}; got {args.site}")
        raise SystemExit(run_site_secure(args.config, fed, args.site, args.set))
    from biomx.federated.launch import run_client

    run_client(fed, cfg, args.site, args.set)


def _cmd_run(args: argparse.Namespace) -> None:
    from biomx.errors import BiomxError
    from biomx.federated.launch import launch

    fed, _ = _load(args)
    code = launch(args.config, fed, args.set, args.resume, Path(args.logs) if args.logs else None)
    if code:
        raise BiomxError(f"federation: the server exited with {code}" + (f"; see {args.logs}/server.log" if args.logs else ""))


def _cmd_simulate(args: argparse.Namespace) -> None:
    from biomx.federated.simulation import simulate

    fed, cfg = _load(args)
    print(f"federated run: {simulate(fed, cfg, args.resume, args.set)}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from biomx.federated.compare import compare

    fed, cfg = _load(args)
    print(f"comparison: {compare(fed, cfg) / 'comparison.csv'}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`biomx federate ...` (docs/federated.md)."""
    p = sub.add_parser("federate", help="federated learning with Flower: a server and one client per site")
    actions = p.add_subparsers(dest="federate_command", required=True, metavar="ACTION")
    helps = {
        "server": "run the federation's server (FedAvg/FedProx) until its rounds are done",
        "client": "run one site's client: train on its own data when the server asks",
        "run": "run the server and every site as processes on this machine (gRPC on localhost)",
        "simulate": "run every site and the server in this process, deterministically (no gRPC)",
        "compare": "simulate federated, each site alone and pooled training; one table on the shared test split",
    }
    commands = {"server": _cmd_server, "client": _cmd_client, "run": _cmd_run, "simulate": _cmd_simulate,
                "compare": _cmd_compare}
    for name, func in commands.items():
        q = actions.add_parser(name, help=helps[name])
        q.add_argument("config", help="federation YAML (see docs/federated.md)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value of the experiment config, e.g. --set train.batch_size=32")  # fmt: skip
        if name == "client":
            q.add_argument("--site", type=positive_int, required=True, help="which site this is (1 to N)")
        elif name != "compare":
            q.add_argument("--resume", metavar="RUN", help="continue this federated run from its last round")
        if name == "run":
            q.add_argument("--logs", metavar="DIR", help="write each process's console to DIR/<name>.log")
        q.set_defaults(func=func)
