"""The budget book: the epsilon that every DP run on the same training data has spent, composed.

DP-SGD bounds what one run reveals about its training samples; two runs over the same patients
(a second model, a fine-tune of a DP model on them) reveal more than either, and their budgets add
up. The book is one JSON file shared by those runs (docs/privacy.md, "Budgets add up"):

    {"version": 1, "data": {DATA_KEY: {"runs": {RUN_ID: {"history": [[sigma, q, steps], ...],
                                                         "delta": d, "updated": "..."}}}}}

- DATA_KEY (`data_key`) is a sha256 over the identities of a run's training samples (each file's
  content hash, or the source file's hash and the row's id): two runs over the same samples with
  the same split share it, another split or dataset gets another. Neither paths nor identifiers
  are stored, only that digest.
- RUN_ID is random, kept in the run's privacy.json: a resumed run replaces its own entry (its
  history grows), it never adds a second one.
- Composition is exact: the histories of every run under a key are concatenated and handed to the
  RDP and PRV accountants (`epsilons`), at the asking run's delta.

The file is read and rewritten under an exclusive lock (`fcntl.flock` on `<book>.lock`), and each
write is atomic (a reader sees the old book or the new one).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from biomx.data.cache import default_cache_dir
from biomx.errors import BiomxError
from biomx.plugins import import_extra
from biomx.runs import read_json, write_json

try:  # POSIX; elsewhere the book is written without a lock (atomically all the same)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LEDGER = "privacy.json"  # a DP run's ledger (biomx.privacy.ledger)
BOOK_ENV = "BIOMX_PRIVACY_BUDGET"  # the book's file when train.privacy.budget_file is not set
VERSION = 1
History = list[tuple[float, float, int]]  # (noise multiplier, sample rate, steps), as opacus keeps it


def epsilons(history: History, delta: float) -> dict[str, float]:
    """Epsilon spent at `delta` after `history`, under each accountant."""
    accountants = import_extra("opacus.accountants", "train.privacy")
    spent: dict[str, float] = {}
    for name, cls in (("rdp", accountants.RDPAccountant), ("prv", accountants.PRVAccountant)):
        accountant = cls()
        accountant.history = compact(history)
        with warnings.catch_warnings():  # opacus warns about its own numerical choices
            warnings.simplefilter("ignore")
            spent[name] = float(accountant.get_epsilon(delta)) if history else 0.0
    return spent


def compact(history: History) -> History:
    """The same history with neighbouring entries of one (noise, sample rate) merged: the
    accountants compose steps at equal settings exactly as one entry, and faster."""
    out: History = []
    for sigma, q, steps in history:
        if out and out[-1][:2] == (float(sigma), float(q)):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(steps))
        elif int(steps) > 0:
            out.append((float(sigma), float(q), int(steps)))
    return out


def book_path(budget_file: str | None = None) -> Path:
    """Where the book is: `train.privacy.budget_file`, else `$BIOMX_PRIVACY_BUDGET`, else
    `privacy/budget.json` in the user's biomx data cache (`$BIOMX_CACHE`, default ~/.cache/biomx)."""
    if budget_file:
        return Path(budget_file).expanduser()
    env = os.environ.get(BOOK_ENV)
    return Path(env).expanduser() if env else default_cache_dir() / "privacy" / "budget.json"


def data_key(run_dir: str | Path) -> str | None:
    """The digest of a run's training samples (None: the folder has no split.csv, e.g. a Trainer
    run from Python on a dataset of its own). Samples with a content hash (file sources) count by
    it, whatever their path; the others by their source file's hash and their row id. Labels do
    not count: the same patients under another label column are the same patients."""
    run_dir = Path(run_dir)
    if not (run_dir / "split.csv").is_file():
        return None
    data = read_json(run_dir / "data.json") if (run_dir / "data.json").is_file() else {}
    source = str(data.get("source_sha256") or "")
    with open(run_dir / "split.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("split") == "train"]
    if not rows:
        return None
    names = sorted(f"f:{row['sha256']}" if row.get("sha256") else f"r:{source}\0{row['id']}" for row in rows)
    digest = hashlib.sha256(f"biomx-privacy-data-v{VERSION}\n".encode())
    for name in names:
        digest.update(name.encode() + b"\n")
    return digest.hexdigest()


def new_run_id() -> str:
    return uuid.uuid4().hex


@contextlib.contextmanager
def _locked(book: Path) -> Iterator[None]:
    try:
        book.parent.mkdir(parents=True, exist_ok=True)
        lock = open(book.with_name(book.name + ".lock"), "w")  # noqa: SIM115 (held for the block)
    except OSError as err:
        raise BiomxError(f"{book}: cannot write the privacy budget book ({err.strerror}); set "
                         f"train.privacy.budget_file or ${BOOK_ENV} to a writable file") from None  # fmt: skip
    with lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _read(book: Path) -> dict[str, Any]:
    if not book.is_file():
        return {"version": VERSION, "data": {}}
    content = read_json(book)
    if not isinstance(content, dict) or not isinstance(content.get("data"), dict):
        raise BiomxError(f"{book}: not a privacy budget book; move it away (its runs would no longer count)")
    return content


def _entry(history: History, delta: float) -> dict[str, Any]:
    return {"history": [list(h) for h in compact(history)], "delta": float(delta),
            "updated": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip


def record(book: Path, key: str, run_id: str, history: History, delta: float) -> dict[str, Any]:
    """Put run `run_id`'s history under `key` (replacing its earlier entry); the totals over
    every run on that data (`totals`)."""
    with _locked(book):
        content = _read(book)
        runs = content["data"].setdefault(key, {"runs": {}})["runs"]
        runs[run_id] = _entry(history, delta)
        write_json(book, content)
    return totals_of(runs, delta)


def check(book: Path) -> None:
    """Fail now, in one line, if the book cannot be read or its folder written (not after an epoch)."""
    with _locked(book):
        _read(book)


def runs_on(book: Path, key: str) -> dict[str, dict[str, Any]]:
    """Every run recorded under `key` (run id -> entry)."""
    with _locked(book):
        return dict(_read(book)["data"].get(key, {}).get("runs", {}))


def totals_of(runs: dict[str, dict[str, Any]], delta: float) -> dict[str, Any]:
    """Epsilon at `delta` over the concatenated histories of `runs`, under each accountant."""
    history: History = [tuple(h) for entry in runs.values() for h in entry["history"]]  # type: ignore[misc]
    spent = epsilons(history, delta)
    return {"epsilon_total_rdp": spent["rdp"], "epsilon_total_prv": spent["prv"], "runs_on_same_data": len(runs)}


def inherit(run_dir: str | Path, parent_run_dir: str | Path, budget_file: str | None = None) -> dict[str, Any]:
    """A run that starts from a DP run's weights (fine-tuning): when both trained on the same
    data, the parent's history joins the book under that data's key (under the parent's run id,
    so a parent already in the book is not counted twice). On other data nothing adds up for the
    new data: the parent's model is a post-processing of its own data, whose budget it keeps.

    Returns what happened: {"inherited": bool, "parent_run_id", "same_data", totals if inherited}.
    """
    parent_dir = Path(parent_run_dir)
    if not (parent_dir / LEDGER).is_file():
        return {"inherited": False, "parent_run_id": None, "same_data": None}  # not a DP run: nothing spent
    parent = read_json(parent_dir / LEDGER)
    if not isinstance(parent, dict) or "history" not in parent:
        raise BiomxError(f"{parent_dir / LEDGER}: not a privacy ledger")
    key = data_key(run_dir)
    if key is None:
        raise BiomxError(f"{run_dir}: no split.csv; inherit a parent's budget once the run's files are written")
    parent_key = parent.get("data_key") or data_key(parent_dir)
    history: History = [tuple(h) for h in parent["history"]]  # type: ignore[misc]
    # A ledger written before the book existed has no run id: one derived from what it spent.
    run_id = parent.get("run_id") or hashlib.sha256(f"{parent_key}\0{history}".encode()).hexdigest()[:32]
    if parent_key != key:
        return {"inherited": False, "parent_run_id": run_id, "same_data": False}
    book = book_path(budget_file)
    spent = record(book, key, run_id, history, float(parent["delta"]))
    return {"inherited": True, "parent_run_id": run_id, "same_data": True, **spent}
