"""Federated learning (`biomx federate`): several sites train one biomx experiment together
without pooling their data, with Flower (FedAvg or FedProx).

    config.py      FederatedConfig: the federation file (which experiment, which sites, rounds)
    sites.py       each site's training and validation rows (a partition rule or its own data)
    client.py      SiteClient: a Flower NumPyClient training one site through the biomx Trainer
    server.py      the strategy, round checkpoints, resume, the final global model as a biomx run
    simulation.py  the same rounds in one process, deterministic (quick experiments, tests)
    launch.py      server and client processes on localhost (`biomx federate run`)
    cli.py         the `biomx federate` subcommands

See docs/federated.md.
"""
