"""Secure aggregation as real processes: Flower's deployment engine on this machine. One SuperLink
(`flower-superlink`, on the federation's address and port), one SuperNode per site
(`flower-supernode --node-config site=K`), and the run submitted with `flwr run` as a Flower App
whose components are biomx's own (`biomx.federated.app:server_app` and `:client_app`; nothing
in a config file names code). SecAgg+ exists only in Flower's Message API, which runs this way;
the legacy `start_server`/`start_client` path has no secure aggregation.

Each SuperNode starts a `flwr-clientapp` process per message (Flower's process isolation), so a
round costs several Python start-ups per site; docs/federated.md has the numbers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from biomx.errors import BiomxError
from biomx.federated.app import FEDERATION, OVERRIDES, RESUME, run_config
from biomx.federated.config import FederatedConfig
from biomx.federated.launch import CONNECT_WAIT_S, wait_for_server, wait_processes

CONNECTION = "biomx"  # the SuperLink connection's name in this launch's own Flower home
APP_TOML = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "biomx-federation"
version = "1.0.0"
description = "A biomx federation with secure aggregation"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "biomx"

[tool.flwr.app.components]
serverapp = "biomx.federated.app:server_app"
clientapp = "biomx.federated.app:client_app"

[tool.flwr.app.config]
{config}
"""


def flower_env(home: Path) -> dict[str, str]:
    """This interpreter's Flower commands first on PATH (the SuperLink and SuperNodes start
    `flower-superexec`, `flwr-serverapp`, `flwr-clientapp` by name) and a Flower home of our own."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(home)
    # How often a SuperNode's executor looks for a message to start a ClientApp process for
    # (Flower's default 1 s, paid at every message: five per site and round with SecAgg+).
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    return env


def write_app(folder: Path, federation: str | Path, overrides: list[str], resume: str | None, fed: FederatedConfig
              ) -> tuple[Path, Path]:  # fmt: skip
    """The Flower App (a pyproject.toml naming biomx's apps), its run config, and the SuperLink
    connection `flwr run` reads; returns (app folder, run config file)."""
    values = run_config(federation, overrides, resume)
    defaults = "\n".join(f"{key} = {json.dumps('')}" for key in (FEDERATION, OVERRIDES, RESUME))
    app = folder / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "pyproject.toml").write_text(APP_TOML.format(config=defaults))
    run_toml = folder / "run_config.toml"
    run_toml.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    (folder / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                        f'address = "{fed.address}:{fed.port}"\ninsecure = true\n')  # fmt: skip
    return app, run_toml


def superlink_command(fed: FederatedConfig) -> list[str]:
    return ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--host", fed.address,
            "--port", str(fed.port)]  # fmt: skip


def node_config(folder: Path, federation: str | Path, overrides: list[str], site: int) -> Path:
    """A SuperNode's node config (a TOML file): its site number and the site's own federation file
    and `--set` overrides, which its ClientApp processes read."""
    path = folder / f"site{site}.toml"
    values = {"site": site, FEDERATION: str(Path(federation).resolve()), OVERRIDES: json.dumps(overrides)}
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    return path


def supernode_command(fed: FederatedConfig, config: Path, port: int) -> list[str]:
    """A site's SuperNode with node config `config`; `port` is its own Runtime API (where its
    ClientApp processes connect)."""
    return ["flower-supernode", "--insecure", "--superlink", f"{fed.address}:{fed.port}", "--host", "127.0.0.1",
            "--port", str(port), "--node-config", str(config), "--max-wait-time", str(int(CONNECT_WAIT_S))]  # fmt: skip


def run_status(env: dict[str, str], run_id: str) -> tuple[str, str]:
    """(status, details) of a run, as the SuperLink reports it ("finished:completed" when it worked)."""
    out = subprocess.run(["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        run = json.loads(out.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return "unknown", (out.stdout + out.stderr).strip()[-300:]
    return str(run["status"]), str(run.get("status-details", ""))


def free_ports(n: int) -> list[int]:
    """`n` ports free now (all bound at once, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Processes:
    """The processes of one launch, each writing `folder/<name>.log` and in its own session, so
    that stopping it stops the `flower-superexec` and app processes it started too."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env, self.folder = env, folder
        self.procs: list[subprocess.Popen] = []
        self.files: list = []

    def start(self, command: list[str], name: str) -> subprocess.Popen:
        self.folder.mkdir(parents=True, exist_ok=True)
        out = (self.folder / f"{name}.log").open("w")
        self.files.append(out)
        proc = subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop_group(proc)
        for f in self.files:
            f.close()


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def launch_secure(config: str | Path, fed: FederatedConfig, overrides: list[str], resume: str | None = None,
                  logs: Path | None = None, timeout_s: float | None = None, local_sites: bool = True) -> int:  # fmt: skip
    """SuperLink, a SuperNode per site (unless the sites run elsewhere: `local_sites` False), then
    `flwr run` until the run ends: 0 when the SuperLink reports it completed. The `flwr run` log
    (the ServerApp's console) is `server.log`, each site's `site<K>.log`."""
    with tempfile.TemporaryDirectory(prefix="biomx-flower-") as tmp:
        home = Path(tmp)
        app, run_toml = write_app(home, config, overrides, resume, fed)
        env = flower_env(home)
        procs = Processes(env, logs or home / "logs")
        try:
            superlink = procs.start(superlink_command(fed), "superlink")
            code = wait_for_server(superlink, fed.address, fed.port)
            if code is not None:
                return code
            sites = []
            for k, port in enumerate(free_ports(fed.n_sites) if local_sites else [], start=1):
                sites.append(procs.start(supernode_command(fed, node_config(home, config, overrides, k), port), f"site{k}"))
            if not local_sites:
                print(f"SuperLink on {fed.address}:{fed.port}: start each site with `biomx federate client "
                      f"{config} --site K`")  # fmt: skip
            run = procs.start(["flwr", "run", str(app), CONNECTION, "--run-config", str(run_toml), "--stream"], "server")
            wait_processes(run, sites, fed.needed if local_sites else 0, logs, timeout_s)
            log = (procs.folder / "server.log").read_text()
            if logs is None:  # no folder to keep it in: the ServerApp's console here
                print(log, end="")
            return _outcome(env, log, logs)
        finally:
            procs.stop()


def run_site_secure(config: str | Path, fed: FederatedConfig, site: int, overrides: list[str]) -> int:
    """`biomx federate client --site K` with secure aggregation: this site's SuperNode, in the
    foreground until stopped (a SuperNode serves every run its SuperLink sends it)."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)  # a terminated site stops its SuperNode too
    with tempfile.TemporaryDirectory(prefix="biomx-flower-") as tmp:
        home = Path(tmp)
        command = supernode_command(fed, node_config(home, config, overrides, site), free_ports(1)[0])
        try:
            return subprocess.run(command, env=flower_env(home), check=False).returncode
        except KeyboardInterrupt:  # subprocess.run has stopped the SuperNode
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)


def _outcome(env: dict[str, str], log: str, logs: Path | None) -> int:
    found = re.search(r"Successfully started run (\d+)", log)
    where = f"; see {logs}/server.log" if logs is not None else ""
    if not found:
        raise BiomxError(f"federation: `flwr run` did not start the run{where}")
    status, details = run_status(env, found.group(1))
    if status != "finished:completed":
        raise BiomxError(f"federation: the run ended {status}: {details}{where}")
    return 0
