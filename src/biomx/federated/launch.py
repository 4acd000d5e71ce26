"""`biomx federate run`: the server and one process per site on this machine, over gRPC on
localhost, as a deployment would run them on separate machines."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flwr as fl

from biomx.errors import BiomxError
from biomx.experiment import prepare
from biomx.federated.client import SiteClient
from biomx.federated.config import FederatedConfig, site_config
from biomx.federated.sites import site_rows

CONNECT_WAIT_S = 300.0  # how long a site keeps trying to reach a server that is not up yet


def run_client(fed: FederatedConfig, cfg: Any, site: int, overrides: list[str] | None = None) -> None:
    """Site `site` (1-based, as the command line counts) until the server ends the federation."""
    if not 1 <= site <= fed.n_sites:
        raise BiomxError(f"--site: the federation has sites 1 to {fed.n_sites}; got {site}")
    p = prepare(site_config(fed, cfg, site - 1, overrides))
    client = SiteClient(p, fed, site - 1, site_rows(fed, p.splits, p.data.labels, site - 1))
    fl.client.start_client(server_address=f"{fed.address}:{fed.port}", client=client.to_client(), insecure=True,
                           max_wait_time=CONNECT_WAIT_S)  # fmt: skip


def listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((address, port)) == 0


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "biomx", "federate", *args]


def wait_processes(server: subprocess.Popen, sites: list[subprocess.Popen], needed: int, logs: Path | None,
                   timeout_s: float | None) -> int:  # fmt: skip
    """The server's exit code; a BiomxError as soon as too many sites have failed for a round to
    start (the server would wait for them for a day)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while server.poll() is None:
        failed = [k + 1 for k, proc in enumerate(sites) if proc.poll() not in (None, 0)]
        if len(sites) - len(failed) < needed:
            where = f"; see {logs}/site{failed[0]}.log" if logs is not None else ""
            raise BiomxError(f"federation: site {failed[0]} exited with {sites[failed[0] - 1].returncode}, and a round "
                             f"needs {needed} sites{where}")  # fmt: skip
        if deadline is not None and time.monotonic() > deadline:
            raise BiomxError(f"federation: not finished within {timeout_s:.0f} s")
        time.sleep(0.5)
    return server.returncode


def wait_for_server(server: subprocess.Popen, address: str, port: int) -> int | None:
    """Until the server listens on its port; its exit code if it exited first (it said why: a
    config or data error, a port in use)."""
    deadline = time.monotonic() + CONNECT_WAIT_S
    while not listening(address, port):
        if server.poll() is not None:
            return server.returncode
        if time.monotonic() > deadline:
            raise BiomxError(f"federation: the server did not listen on {address}:{port} within {CONNECT_WAIT_S:.0f} s")
        time.sleep(0.3)
    return None


def launch(config: str | Path, fed: FederatedConfig, overrides: list[str], resume: str | None = None,
           logs: Path | None = None, timeout_s: float | None = None) -> int:  # fmt: skip
    """Start the server, wait for its port, start every site, wait for all; the server's exit code
    (a site that fails is dropped by the server, which goes on with the others). With secure
    aggregation, Flower's SuperLink and SuperNodes instead (`biomx.federated.deploy`)."""
    if fed.secure_aggregation is not None:
        from biomx.federated.deploy import launch_secure

        return launch_secure(config, fed, overrides, resume, logs, timeout_s)
    sets = [a for o in overrides for a in ("--set", o)]
    resumed = ["--resume", resume] if resume else []
    procs: list[subprocess.Popen] = []
    files = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        out = None
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            out = (logs / f"{name}.log").open("w")
            files.append(out)
        proc = subprocess.Popen(_command(args), stdout=out, stderr=subprocess.STDOUT if out else None)
        procs.append(proc)
        return proc

    try:
        server = start(["server", str(config), *sets, *resumed], "server")
        code = wait_for_server(server, fed.address, fed.port)
        if code is not None:
            return code
        sites = [start(["client", str(config), "--site", str(k), *sets], f"site{k}") for k in range(1, fed.n_sites + 1)]
        return wait_processes(server, sites, fed.needed, logs, timeout_s)
    finally:
        for proc in procs:  # sites left waiting for a server that ended
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for f in files:
            f.close()
