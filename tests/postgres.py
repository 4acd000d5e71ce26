"""A throwaway PostgreSQL server for the tests that need a real one (a `biomx tune` study shared
by workers): a new cluster in a temp folder, on a free port, removed at the end.

Debian's `postgresql` package (`make postgres`) puts initdb and pg_ctl in
/usr/lib/postgresql/<version>/bin, off PATH. initdb refuses to run as root, so as root the
cluster is made and run by the `postgres` user (or `nobody`), which owns the temp folder; the
tests reach it over TCP on 127.0.0.1 with trust authentication, as any user.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from servers import free_port

SUPERUSER = "biomx"


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout, else initdb on PATH)."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    if found:
        return max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _unprivileged() -> dict[str, Any]:
    """subprocess arguments that run a command as an unprivileged user when we are root."""
    if os.getuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    raise AssertionError("running as root with neither a postgres nor a nobody user: initdb cannot run")


def _missing() -> None:
    reason = "PostgreSQL is not installed (make postgres; Debian: apt-get install postgresql)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}: CI installs it, so this is a broken setup, not a skip")
    pytest.skip(reason)


@contextmanager
def postgres_server(database: str = "optuna") -> Iterator[str]:
    """A running server with an empty `database` until the block ends; yields its SQLAlchemy URL
    (postgresql+psycopg://biomx@127.0.0.1:PORT/DATABASE). Skips where PostgreSQL is not installed,
    except in CI (CI=true), where that fails."""
    bindir = postgres_bin()
    if bindir is None:
        _missing()
    root = Path(tempfile.mkdtemp(prefix="biomx-pg-"))  # not pytest's tmp_path: a 0700 root-owned tree
    as_user = _unprivileged()
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LC_ALL": "C"}

    def run(*command: str) -> None:
        result = subprocess.run([str(bindir / command[0]), *command[1:]], cwd=root, env=env, capture_output=True,
                                text=True, timeout=120, **as_user)  # fmt: skip
        if result.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").is_file() else ""
            raise AssertionError(f"{' '.join(command[:2])} failed ({result.returncode}):\n{result.stderr}\n{log}")

    data, port = str(root / "data"), free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        run("initdb", "-D", data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        run("pg_ctl", "-D", data, "-l", str(root / "server.log"), "-w", "-t", "60", "-o", options, "start")
        try:
            run("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, database)
            yield f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{port}/{database}"
        finally:
            run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
