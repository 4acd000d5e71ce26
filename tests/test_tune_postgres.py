"""A `biomx tune` study in a real PostgreSQL server (started for the test: tests/postgres.py) shared
by two workers that share nothing else, as on two machines: each has its own tune folder, so only
the server's advisory lock keeps them to tune.trials. A URL that cannot be opened is one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

import postgres
from biomx.cli import main
from biomx.tune.search import Setup, ask_lock_key, make_study
from servers import free_port
from test_tune import _config

pytestmark = pytest.mark.usefixtures("one_thread")
TIMEOUT_S = 180


@pytest.fixture
def database() -> Iterator[str]:
    with postgres.postgres_server() as url:
        yield url


def _machine(root: Path, png_folder: Path, url: str, name: str) -> Path:
    """The same experiment as on another machine: its own output folder, the shared study."""
    folder = root / name
    folder.mkdir()
    path = _config(folder, png_folder, storage=url, study="shared", trials=3)
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 1"))
    return path


def _waiting(engine: sqlalchemy.Engine, key: int) -> int:
    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :key"
    with engine.connect() as connection:
        return connection.execute(sqlalchemy.text(query), {"key": key}).scalar_one()


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, png_folder, database):
    configs = [_machine(tmp_path, png_folder, database, name) for name in ("a", "b")]
    engine = sqlalchemy.create_engine(database, poolclass=sqlalchemy.pool.NullPool)
    key = ask_lock_key("shared")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [(c.parent / "worker.log").open("w") for c in configs]
    # The test holds the server's lock until both workers wait for it, so that both ask while the other
    # trains (otherwise which worker runs which trial is a matter of start-up time). The database is
    # empty: both start by opening the study, and only one of them may create Optuna's tables.
    with engine.connect() as holder:
        holder.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        commands = [[sys.executable, "-m", "biomx", "tune", str(c), "--worker"] for c in configs]
        workers = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
                   for command, log in zip(commands, logs, strict=True)]  # fmt: skip
        deadline = time.monotonic() + TIMEOUT_S
        while _waiting(engine, key) < 2:
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "workers never asked"
            time.sleep(0.2)
        holder.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    for worker, config, log in zip(workers, configs, logs, strict=True):
        worker.wait(timeout=TIMEOUT_S)
        log.close()
        assert worker.returncode == 0, (config.parent / "worker.log").read_text()[-3000:]
    # `biomx tune CONFIG` once (machine a): no trial left to run, the summary.
    assert main(["tune", str(configs[0])]) == 0
    trials = make_study(Setup(configs[0], []), 0).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    hosts = {t.user_attrs["worker"] for t in trials}
    assert hosts == {f"{socket.gethostname()}:{w.pid}" for w in workers}  # both workers ran trials
    runs = sorted(Path(t.user_attrs["run"]).relative_to(tmp_path).parts[0] for t in trials)
    assert set(runs) == {"a", "b"}  # each in its own machine's folder
    for t in trials:
        assert Path(t.user_attrs["run"]).name == f"trial-{t.number:04d}"
    summary = json.loads((tmp_path / "a" / "runs" / "tiny-tune" / "tune_summary.json").read_text())
    assert summary["counts"] == "3 complete" and len(summary["trials"]) == 3


def test_a_study_database_that_cannot_be_opened_is_one_line(tmp_path, png_folder, database, capsys):
    missing = database.rsplit("/", 1)[0] + "/no_such_db"
    closed = f"postgresql+psycopg://biomx:secret@127.0.0.1:{free_port()}/optuna"  # nothing listens there
    cases = [(missing, 'database "no_such_db" does not exist'), (closed, "Connection refused"),
             ("postgresql+nodriver://h/db", "Can't load plugin"), ("nonsense", "Could not parse")]  # fmt: skip
    for url, says in cases:
        path = _config(tmp_path, png_folder, storage=url)
        assert main(["tune", str(path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: tune.storage: ") and says in err[0], err
        assert "secret" not in err[0]  # the URL is shown without its password
    assert not list((tmp_path / "runs").glob("tiny-tune/trial-*"))



def test_no_postgres_skips_here_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(postgres, "postgres_bin", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make postgres"), postgres.postgres_server():
        pass
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI installs it"), postgres.postgres_server():
        pass
