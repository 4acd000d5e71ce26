"""`torchrun --nproc_per_node 2 -m biomx tune`: two CPU processes (gloo) train every trial together;
rank 0 alone asks the study, prunes and tells, and every rank stops together (no hang: each run has
a timeout), after a pruned epoch as after an error on rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biomx.cli import main
from biomx.tune.search import Setup, make_study
from test_tune import _config, _trials

TIMEOUT_S = 240  # a hang would wait for gloo's 30-minute timeout; this fails it long before


def _torchrun(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "0", "-m", "biomx", "tune", str(config)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.mark.slow
def test_torchrun_trials_are_shared_and_pruned_together(tmp_path, png_folder):
    # Two good trials, then one whose learning rate cannot move the loss: rank 0's pruner stops it
    # after epoch 1, and rank 1 must stop with it (else it waits in the next epoch's all-reduce).
    space = {"train.optimizer.lr": {"choice": [0.01, 1e-9]}}
    path = _config(tmp_path, png_folder, space, pruner="median", trials=3)
    study = make_study(Setup(path, []), 0)
    for lr in (0.01, 0.01, 1e-9):
        study.enqueue_trial({"train.optimizer.lr": lr})
    result = _torchrun(path, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _trials(path)
    assert [t.number for t in trials] == [0, 1, 2]  # rank 1 asked for none
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    tune_dir = tmp_path / "runs" / "tiny-tune"
    assert sorted(p.name for p in tune_dir.iterdir() if p.is_dir()) == ["trial-0000", "trial-0001", "trial-0002"]
    for t in trials:  # one run folder per trial, written by rank 0, with the trial's parameters
        run = Path(t.user_attrs["run"])
        assert run.parent == tune_dir and (run / "report.html").is_file()
        card = json.loads((run / "model_card.json").read_text())
        assert [s["facts"]["processes"] for s in card["sections"] if "processes" in s.get("facts", {})] == ["2"]
        assert json.loads((run / "tune_trial.json").read_text())["params"] == t.params
    pruned = Path(trials[2].user_attrs["run"])
    assert json.loads((pruned / "tune_trial.json").read_text())["state"] == "pruned"
    assert len((pruned / "metrics.jsonl").read_text().splitlines()) == 1  # every rank stopped after epoch 1
    assert len((Path(trials[0].user_attrs["run"]) / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((tune_dir / "tune_summary.json").read_text())
    assert summary["counts"] == "2 complete, 1 pruned" and summary["best"]["number"] in (0, 1)
    assert (tune_dir / "best_config.yaml").is_file()


@pytest.mark.slow
def test_an_error_on_rank_0_ends_every_rank(tmp_path, png_folder):
    # The metric is checked by rank 0's pruning callback after epoch 1: an error there, on one rank,
    # is shared, so both processes exit with it instead of rank 1 waiting for the next trial.
    path = _config(tmp_path, png_folder, metric="val_nonexistent", trials=2)
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 1"))
    result = _torchrun(path, tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "error: tune.metric: val_nonexistent is not among the epoch's metrics" in "\n".join(errors)
    assert any("rank 0 stopped" in line for line in errors), errors  # rank 1's line
    assert result.stderr.count("Traceback") == 1 and "ChildFailedError" in result.stderr  # torchrun's own, only
    trials = _trials(path)
    assert [t.state.name for t in trials] == ["FAIL"]  # the first trial, told by rank 0; no second


def test_workers_are_refused_under_torchrun(tmp_path, png_folder, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; refused before joining any process group
    assert main(["tune", str(_config(tmp_path, png_folder)), "--workers", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tune --workers: not under torchrun"), err
