"""The privacy budget book: DP runs on the same training data add up (composed exactly), another
split is other data, a resumed run is counted once, a fine-tune inherits its parent's budget, and
the book holds hashes only. Real chest X-rays, one epoch each."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from biomx.cli import main
from biomx.privacy.budget import book_path, data_key, epsilons, inherit

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(root: Path, png_folder: Path, name: str, book: Path, *, split_seed: int = 0, seed: int = 0) -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}, split: {{seed: {split_seed}}}}}\n"
        "model: {name: small_cnn, args: {width: 4, depth: 2, norm: group}}\n"
        f"train: {{epochs: 1, batch_size: 16, seed: {seed}, progress: false,\n"
        f"        privacy: {{epsilon: 4, baseline: false, budget_file: {book}}}}}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


def _ledger(run: Path) -> dict:
    return json.loads((run / "privacy.json").read_text())


def _history(ledger: dict) -> list[tuple[float, float, int]]:
    return [tuple(h) for h in ledger["history"]]


def test_two_dp_runs_on_the_same_data_compose_and_another_split_is_other_data(tmp_path, png_folder):
    book = tmp_path / "book.json"
    a = _ledger(_train(tmp_path, png_folder, "a", book))
    b = _ledger(_train(tmp_path, png_folder, "b", book, seed=1))  # another model, the same patients
    assert a["data_key"] == b["data_key"] and a["run_id"] != b["run_id"]
    assert a["runs_on_same_data"] == 1 and a["epsilon_total_rdp"] == a["epsilon_rdp"]
    assert b["runs_on_same_data"] == 2
    assert b["epsilon_total_rdp"] > max(a["epsilon_rdp"], b["epsilon_rdp"])
    assert b["epsilon_total_prv"] > max(a["epsilon_prv"], b["epsilon_prv"])
    exact = epsilons(_history(a) + _history(b), b["delta"])  # composition of the two histories
    assert b["epsilon_total_rdp"] == pytest.approx(exact["rdp"], rel=1e-9)
    assert b["epsilon_total_prv"] == pytest.approx(exact["prv"], rel=1e-6)
    assert "1 other DP run(s) used the same training data" in (tmp_path / "runs" / "b" / "report.html").read_text()

    c = _ledger(_train(tmp_path, png_folder, "c", book, split_seed=7))  # another split: other training rows
    assert c["data_key"] != a["data_key"] and c["runs_on_same_data"] == 1

    # The book holds digests and numbers only: no path, no file name, no sample id.
    text = book.read_text()
    content = json.loads(text)
    assert set(content["data"]) == {a["data_key"], c["data_key"]}
    assert set(content["data"][a["data_key"]]["runs"]) == {a["run_id"], b["run_id"]}
    with open(tmp_path / "runs" / "a" / "split.csv", newline="") as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    assert ids and not any(Path(i).name in text for i in ids)
    assert str(png_folder) not in text and str(tmp_path) not in text and ".png" not in text


def test_the_key_is_the_training_samples_content_not_their_paths(tmp_path, png_folder):
    header = "id,label,split,sha256\n"
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text("{}")
    (run / "split.csv").write_text(header + "/x/a.png,0,train,aa\n/x/b.png,1,train,bb\n/x/c.png,1,test,cc\n")
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "data.json").write_text("{}")
    (moved / "split.csv").write_text(header + "/y/b.png,0,train,bb\n/y/a.png,1,train,aa\n/y/c.png,1,val,cc\n")
    assert data_key(run) == data_key(moved)  # the same files elsewhere, other labels: the same patients
    (moved / "split.csv").write_text(header + "/y/b.png,0,train,bb\n/y/a.png,1,val,aa\n/y/c.png,1,train,cc\n")
    assert data_key(run) != data_key(moved)
    assert data_key(tmp_path) is None  # no split.csv: no key, no book entry


def test_a_resumed_run_replaces_its_own_entry(tmp_path, png_folder):
    book = tmp_path / "book.json"
    run = _train(tmp_path, png_folder, "r", book)
    first = _ledger(run)
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 0  # one more epoch
    again = _ledger(run)
    assert again["run_id"] == first["run_id"] and again["steps"] == 2 * first["steps"]
    runs = json.loads(book.read_text())["data"][first["data_key"]]["runs"]
    assert list(runs) == [first["run_id"]] and runs[first["run_id"]]["history"] == again["history"]
    assert again["runs_on_same_data"] == 1 and again["epsilon_total_rdp"] == pytest.approx(again["epsilon_rdp"])


def test_a_fine_tune_inherits_its_parents_budget_once(tmp_path, png_folder):
    parent_dir = _train(tmp_path, png_folder, "parent", tmp_path / "elsewhere.json")  # another book
    book = tmp_path / "book.json"
    child_dir = _train(tmp_path, png_folder, "child", book)
    parent, child = _ledger(parent_dir), _ledger(child_dir)
    assert child["runs_on_same_data"] == 1  # the parent is in another book: not known yet
    got = inherit(child_dir, parent_dir, budget_file=str(book))
    assert got["inherited"] and got["same_data"] and got["parent_run_id"] == parent["run_id"]
    assert got["runs_on_same_data"] == 2
    assert got["epsilon_total_rdp"] == pytest.approx(epsilons(_history(parent) + _history(child), 1e-5)["rdp"])
    assert inherit(child_dir, parent_dir, budget_file=str(book))["runs_on_same_data"] == 2  # never twice
    other = _train(tmp_path, png_folder, "other", tmp_path / "third.json", split_seed=7)
    elsewhere = inherit(child_dir, other, budget_file=str(book))
    assert elsewhere == {"inherited": False, "parent_run_id": _ledger(other)["run_id"], "same_data": False}
    assert not inherit(child_dir, tmp_path)["inherited"]  # not a DP run: nothing spent


def test_the_default_book_is_per_user_and_an_env_var_moves_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BIOMX_PRIVACY_BUDGET", raising=False)
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    assert book_path(None) == tmp_path / "cache" / "privacy" / "budget.json"
    monkeypatch.setenv("BIOMX_PRIVACY_BUDGET", str(tmp_path / "team.json"))
    assert book_path(None) == tmp_path / "team.json"
    assert book_path(str(tmp_path / "mine.json")) == tmp_path / "mine.json"
