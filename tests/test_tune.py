"""`biomx tune`: a study of tiny real runs (160 chest X-rays, small_cnn, 2 epochs) that resumes,
shares one journal between worker processes, records pruned trials and refuses a bad space key."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from biomx.cli import main
from biomx.config import load_config
from biomx.tune.search import Setup, make_study

pytestmark = pytest.mark.usefixtures("one_thread")

SPACE = {"train.optimizer.lr": {"log_uniform": [1e-4, 1e-2]}, "model.args.width": {"choice": [4, 8]}}


def _config(root: Path, png_folder: Path, space: dict | None = None, **tune) -> Path:
    cfg = {
        "name": "tiny",
        "data": {"source": "folder", "path": str(png_folder), "image": {"size": [28, 28]}},
        "model": {"name": "small_cnn", "args": {"width": 8, "depth": 2}},
        "train": {"epochs": 2, "batch_size": 32, "progress": False, "monitor": "val_loss"},
        "eval": {"bootstrap": 0, "explain": 0},
        "output": {"dir": str(root / "runs"), "tensorboard": False},
        "tune": {"trials": 2, "pruner": "none", "space": space or SPACE, **tune},
    }
    path = root / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _trials(path: Path) -> list[optuna.trial.FrozenTrial]:
    setup = Setup(path, [])
    return make_study(setup, 0).get_trials()


def test_study_resumes_and_writes_a_trainable_best_config(tmp_path, png_folder):
    path = _config(tmp_path, png_folder)
    assert main(["tune", str(path)]) == 0
    tune_dir = tmp_path / "runs" / "tiny-tune"
    assert sorted(p.name for p in tune_dir.glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert main(["tune", str(path), "--trials", "3"]) == 0  # continues: one new trial, not three
    trials = _trials(path)
    assert [t.number for t in trials] == [0, 1, 2] and all(t.state.name == "COMPLETE" for t in trials)
    assert trials[2].params not in (trials[0].params, trials[1].params)  # the resumed sampler moved on
    for t in trials:  # every trial is a normal run, with its parameters applied
        run = Path(t.user_attrs["run"])
        assert (run / "report.html").is_file() and (run / "metrics.jsonl").is_file()
        saved = yaml.safe_load((run / "config.yaml").read_text())
        assert saved["train"]["optimizer"]["lr"] == pytest.approx(t.params["train.optimizer.lr"])
        assert json.loads((run / "tune_trial.json").read_text())["state"] == "complete"
    summary = json.loads((tune_dir / "tune_summary.json").read_text())
    best = min(trials, key=lambda t: t.value)
    assert summary["best"]["number"] == best.number and len(summary["trials"]) == 3
    assert set(summary["importances"]) == set(SPACE)
    assert (tune_dir / "history.png").is_file() and "| trial | state |" in (tune_dir / "report.md").read_text()
    cfg = load_config(tune_dir / "best_config.yaml")
    assert cfg.tune is None and cfg.model.args["width"] == best.params["model.args.width"]
    assert cfg.train.optimizer.lr == pytest.approx(best.params["train.optimizer.lr"])
    assert cfg.output.dir == str(tmp_path / "runs") and cfg.output.name is None


def test_a_trial_left_running_by_a_killed_process_is_retried(tmp_path, png_folder):
    path = _config(tmp_path, png_folder)
    study = make_study(Setup(path, []), 0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = study.ask({"train.optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
                        "model.args.width": optuna.distributions.CategoricalDistribution([4, 8])})
    killed.set_user_attr("worker", f"{socket.gethostname()}:{int(dead.stdout)}")  # gone
    assert main(["tune", str(path)]) == 0
    trials = _trials(path)
    assert trials[0].state.name == "FAIL"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == killed.params and retry[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2


def test_two_workers_share_one_journal_study(tmp_path, png_folder):
    path = _config(tmp_path, png_folder)
    assert main(["tune", str(path), "--trials", "4", "--workers", "2"]) == 0
    trials = _trials(path)
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["run"] for t in trials}) == 4
    # Which process ran which trial depends on timing (a worker starts in seconds): not asserted.
    assert len({t.user_attrs["worker"] for t in trials}) in (1, 2)


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path, png_folder):
    # Two good trials, then one whose learning rate cannot move the loss: pruned after epoch 1.
    space = {"train.optimizer.lr": {"choice": [0.01, 1e-9]}}
    path = _config(tmp_path, png_folder, space, pruner="median", trials=3)
    study = make_study(Setup(path, []), 0)
    for lr in (0.01, 0.01, 1e-9):
        study.enqueue_trial({"train.optimizer.lr": lr})
    assert main(["tune", str(path)]) == 0
    trials = _trials(path)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    run = Path(trials[2].user_attrs["run"])
    assert json.loads((run / "tune_trial.json").read_text())["state"] == "pruned"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # stopped after the first epoch
    assert (run / "report.html").is_file()


def test_a_bad_space_key_is_one_line_before_any_trial(tmp_path, png_folder, capsys):
    path = _config(tmp_path, png_folder, {"train.optimiser.lr": {"log_uniform": [1e-4, 1e-2]}})
    assert main(["tune", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: tune.space: 'train.optimiser.lr' is not a config key (e.g. train.optimizer.lr)"]
    assert not (tmp_path / "runs").exists()
    path = _config(tmp_path, png_folder, {"model.args.wdth": {"choice": [4, 8]}})
    assert main(["tune", str(path)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    path = _config(tmp_path, png_folder, {"train.optimizer.lr": {"log_uniform": [1e-2, 1e-4]}})
    assert main(["tune", str(path)]) == 1
    assert "low < high" in capsys.readouterr().err
