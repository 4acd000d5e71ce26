"""`biomx tune CONFIG`: an Optuna study whose every trial is a normal run (biomx.experiment.train).

The study lives in Optuna storage (a journal file in the tune folder by default, or a database
URL), so re-running the same command continues it and several worker processes share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

from biomx.engine.callbacks import Callback
from biomx.engine.trainer import lower_is_better
from biomx.errors import BiomxError, ConfigError
from biomx.runs import write_json
from biomx.tune.config import TuneConfig

COUNTED = ("COMPLETE", "PRUNED", "RUNNING")  # trial states that count toward tune.trials


def _optuna():
    try:
        import optuna
    except ImportError:
        raise BiomxError("biomx tune needs Optuna: pip install 'biomx[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class Setup:
    """What every process of one search shares: the config file, its overrides, the tune section."""

    def __init__(self, config: str | Path, overrides: list[str]) -> None:
        from biomx.config import load_config

        self.config, self.overrides = Path(config), list(overrides)
        self.cfg = load_config(self.config, self.overrides)
        if self.cfg.tune is None:
            raise ConfigError(f"{self.config}: no tune section (docs/tuning.md), e.g. tune: {{trials: 20, space: ...}}")
        self.tune: TuneConfig = self.cfg.tune
        self.metric = self.tune.metric or self.cfg.train.monitor
        if not self.metric.startswith("val_"):
            raise ConfigError(f"tune.metric: {self.metric!r} is not a validation metric; set tune.metric (val_...)")
        lower = lower_is_better(self.metric)
        self.direction = self.tune.direction or ("minimize" if lower else "maximize")
        self.dir = Path(self.cfg.output.dir) / f"{self.cfg.name}-tune"
        self.study_name = self.tune.study or self.cfg.name

    def trial_config(self, params: dict[str, Any], number: int | None):
        """The validated config of one trial: the search's overrides, then `params`, no tune section."""
        from biomx.config import load_config

        sets = [f"{key}={json.dumps(value)}" for key, value in params.items()]
        where = [] if number is None else [f"output.dir={json.dumps(str(self.dir))}", f"output.name=trial-{number:04d}"]
        return load_config(self.config, [*self.overrides, "tune=null", *sets, *where])


def check_space(setup: Setup) -> None:
    """Every space key names an existing config value (model.args: an argument of the model),
    and the config is valid at one corner of the space: one line, before any trial runs."""
    from biomx.models.registry import check_model_args

    dumped = setup.cfg.model_dump(mode="json")
    for key in setup.tune.space:
        if key.startswith("model.args."):
            check_model_args(setup.cfg.model.name, {key.removeprefix("model.args."): _corner(setup.tune.space[key])})
            continue
        node: Any = dumped
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"tune.space: {key!r} is not a config key (e.g. train.optimizer.lr)")
            node = node[part]
    setup.trial_config({k: _corner(v) for k, v in setup.tune.space.items()}, None)


def _corner(entry: dict[str, list[Any]]) -> Any:
    return next(iter(entry.values()))[0]


def suggest(trial, key: str, entry: dict[str, list[Any]]) -> Any:
    """The trial's value for one space entry."""
    kind, values = next(iter(entry.items()))
    if kind == "choice":
        return trial.suggest_categorical(key, values)
    if kind in ("int", "int_log"):
        return trial.suggest_int(key, values[0], values[1], log=kind == "int_log")
    return trial.suggest_float(key, float(values[0]), float(values[1]), log=kind == "log_uniform")


class Pruning(Callback):
    """Reports the per-epoch validation metric to the trial; when Optuna says prune, ends the
    run like early stopping (it is still evaluated and reported) and remembers it."""

    def __init__(self, trial, metric: str, direction: str) -> None:
        self.trial, self.metric, self.direction = trial, metric, direction
        self.values: list[float] = []
        self.pruned = False

    def on_epoch_end(self, trainer, record: dict[str, Any]) -> None:
        if self.metric not in record:
            shown = ", ".join(k for k in record if k.startswith("val_")) or "none: the config has no validation split"
            raise ConfigError(f"tune.metric: {self.metric} is not among the epoch's metrics ({shown})")
        value = record[self.metric]
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.values.append(float(value))
        self.trial.report(float(value), record["epoch"])
        last = record["epoch"] >= trainer.settings.epochs  # a trial that ran every epoch is complete
        if not last and self.trial.should_prune():
            self.pruned = True
            trainer.state["stopped_early"] = True

    def best(self) -> float:
        if not self.values:
            raise BiomxError(f"no finite {self.metric} in any epoch of this trial")
        return min(self.values) if self.direction == "minimize" else max(self.values)


def make_study(setup: Setup, seed: int):
    optuna = _optuna()
    tune = setup.tune
    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
               "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=setup.cfg.train.epochs),
               "none": optuna.pruners.NopPruner}  # fmt: skip
    try:
        with _server_lock(setup):  # workers starting at once on an empty database: one makes the tables
            study = optuna.create_study(storage=storage(setup), study_name=setup.study_name, direction=setup.direction,
                                        pruner=pruners[tune.pruner](), load_if_exists=True)  # fmt: skip
    except Exception as err:
        if not tune.storage:
            raise
        raise ConfigError(database_error(tune.storage, err)) from None  # unreachable, bad URL, no driver
    # A resumed study must not draw the same parameters again: the seed moves on with the trials.
    seed += len(study.get_trials(deepcopy=False))
    samplers = optuna.samplers
    study.sampler = samplers.TPESampler(seed=seed) if tune.sampler == "tpe" else samplers.RandomSampler(seed)
    return study


def storage(setup: Setup):
    """The study's storage: tune.storage (a database URL) as given, else a journal file in the
    tune folder, written under a file lock (safe for several processes on one machine)."""
    optuna = _optuna()
    if setup.tune.storage:
        return setup.tune.storage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    setup.dir.mkdir(parents=True, exist_ok=True)
    path = str(setup.dir / "study.journal")
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))


def database_error(url: str, err: BaseException) -> str:
    """One line for a tune.storage that cannot be opened: the URL without its password, and the
    driver's first line (connection refused, unknown host, authentication failed, no such database)."""
    shown = url
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    cause = err.__cause__ or err.__context__
    if isinstance(err, ImportError) and isinstance(cause, ImportError):  # Optuna's "install appropriate one"
        return f"tune.storage: {shown}: its database driver is missing ({cause}); PostgreSQL: pip install 'biomx[tune]'"
    reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    reason = reason.split(") ", 1)[1] if reason.startswith("(") and ") " in reason else reason  # "(psycopg...) "
    return f"tune.storage: cannot open the study database {shown}: {reason}"[:400]


@contextlib.contextmanager
def _locked(setup: Setup):
    """One process at a time counts the trials and asks for the next one (no trial beyond
    tune.trials): a file lock in the tune folder (one machine), and with a PostgreSQL study an
    advisory lock on the server too (workers on several machines)."""
    setup.dir.mkdir(parents=True, exist_ok=True)
    with open(setup.dir / "ask.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with _server_lock(setup):
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ask_lock_key(study_name: str) -> int:
    """The PostgreSQL advisory lock (a 32-bit number, one per study) that workers take to ask."""
    return zlib.crc32(f"biomx tune {study_name}".encode())


@contextlib.contextmanager
def _server_lock(setup: Setup):
    url = setup.tune.storage or ""
    if not url.startswith("postgresql"):
        yield  # a journal file or SQLite: one machine, the file lock covers it; other servers: not locked
        return
    import sqlalchemy

    key = ask_lock_key(setup.study_name)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:  # a session lock: the server drops it if this process dies
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's trial: cannot tell, leave it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study) -> int:
    """Trials left RUNNING by a killed process of this machine are marked failed; every failed
    trial marked for retry (killed or interrupted) is queued again with its parameters once.
    Returns how many were queued."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _alive(str(t.user_attrs.get("worker", ""))):
            study._storage.set_trial_user_attr(t._trial_id, "retry", True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("retry") and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            queued += 1
    return queued


def counted(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in COUNTED)))


def next_trial(setup: Setup, study, trials: int) -> tuple[Any, dict[str, Any]] | None:
    """The next trial and its parameters, asked under the lock; None once `trials` are counted."""
    with _locked(setup):
        if counted(study) >= trials:
            return None
        trial = study.ask()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    with recorded(study, trial):
        return trial, {key: suggest(trial, key, entry) for key, entry in setup.tune.space.items()}


@contextlib.contextmanager
def recorded(study, trial):
    """An exception in the block fails the trial (queued again at the next start when it was
    interrupted: Ctrl-C, SIGTERM, a stop request) and goes on."""
    try:
        yield
    except BaseException as err:
        interrupted = isinstance(err, (KeyboardInterrupt, SystemExit)) or type(err).__name__ == "TrainingInterrupted"
        trial.set_user_attr("retry", interrupted)
        study.tell(trial, state=_optuna().trial.TrialState.FAIL)
        raise


def finish(setup: Setup, study, trial, params: dict[str, Any], pruning: Pruning, run_dir: Path) -> None:
    """A trained trial: its tune_trial.json, then the study told PRUNED or its best value."""
    with recorded(study, trial):
        trial.set_user_attr("run", str(run_dir))
        state = "pruned" if pruning.pruned else "complete"
        write_json(run_dir / "tune_trial.json", {"trial": trial.number, "state": state, "params": params,
                                                 "metric": setup.metric, "value": pruning.best()})  # fmt: skip
    if pruning.pruned:
        study.tell(trial, state=_optuna().trial.TrialState.PRUNED)
    else:
        study.tell(trial, pruning.best())


def run_trials(setup: Setup, study, trials: int) -> None:
    """Ask, train, tell until `trials` trials of the study are finished or running."""
    from biomx.experiment import train

    while (asked := next_trial(setup, study, trials)) is not None:
        trial, params = asked
        pruning = Pruning(trial, setup.metric, setup.direction)
        with recorded(study, trial):
            run_dir = train(setup.trial_config(params, trial.number), callbacks=[pruning])
        finish(setup, study, trial, params, pruning, run_dir)


def tune(config: str | Path, overrides: list[str] | None = None, trials: int | None = None, workers: int = 1,
         worker: bool = False) -> Path:  # fmt: skip
    """Run (or continue) the search of `config`'s tune section; returns the tune folder.

    `workers` > 1 starts workers - 1 more processes (`biomx tune --worker`) on the same study.
    A worker only runs trials; the first process also recovers killed trials and writes the summary.
    """
    from biomx.tune.report import write_summary

    setup = Setup(config, overrides or [])
    check_space(setup)
    trials = trials or setup.tune.trials
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: rank 0 talks to the study (tune/ranks.py)
        from biomx.tune.ranks import tune_ranks

        if workers > 1:
            raise ConfigError("tune --workers: not under torchrun (one torchrun is one worker of the study; "
                              "start another torchrun with --worker for more)")  # fmt: skip
        return tune_ranks(setup, trials, worker)
    study = open_study(setup, worker)
    if worker:
        run_trials(setup, study, trials)
        return setup.dir
    extra = [_start_worker(setup, trials) for _ in range(max(0, workers - 1))]
    try:
        run_trials(setup, study, trials)
    finally:
        codes = [process.wait() for process in extra]
    if any(codes):
        raise BiomxError(f"tune: {sum(1 for c in codes if c)} worker process(es) failed (exit {max(codes)})")
    write_summary(setup, study)
    return setup.dir


def open_study(setup: Setup, worker: bool):
    """The study (created on first use); the first process (not a --worker) also queues again
    the trials that a killed or interrupted process left."""
    study = make_study(setup, setup.tune.seed + (os.getpid() if worker else 0))
    queued = 0 if worker else recover(study)
    if queued:
        print(f"tune: {queued} interrupted trial(s) queued again")
    return study


def _start_worker(setup: Setup, trials: int) -> subprocess.Popen:
    sets = [arg for item in setup.overrides for arg in ("--set", item)]
    command = [sys.executable, "-m", "biomx.cli", "tune", str(setup.config), *sets, "--trials", str(trials), "--worker"]
    return subprocess.Popen(command)  # noqa: S603  (our own command line)
