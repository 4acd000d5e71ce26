"""`biomx federate`: real server and site processes over gRPC on localhost, and the in-process
simulation (the same client and strategy classes), on the embedded chest X-rays."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biomx.cli import main
from biomx.engine.checkpoint import load_checkpoint
from biomx.errors import ConfigError
from biomx.experiment import prepare
from biomx.federated.client import SiteClient
from biomx.federated.config import load_federation
from biomx.federated.sites import partition, site_rows
from biomx.federated.weights import build_global_model, get_weights
from servers import free_port

pytestmark = pytest.mark.usefixtures("one_thread")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def write_federation(root: Path, png_folder: Path, name: str, **settings: object) -> Path:
    """A tiny experiment (small_cnn, 28x28, 160 X-rays) and a federation file of 3 sites."""
    (root / f"{name}_exp.yaml").write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 16, progress: false}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    fed = {"experiment": f"{name}_exp.yaml", "sites": 3, "rounds": 2, "port": free_port(), **settings}
    path = root / f"{name}.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in fed.items()))
    return path


def test_three_site_processes_over_grpc_make_a_run_that_predicts(tmp_path, png_folder, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # four processes on two busy cores
    fed = write_federation(tmp_path, png_folder, "grpc")
    assert main(["federate", "run", str(fed), "--logs", str(tmp_path / "logs")]) == 0
    run = tmp_path / "runs" / "grpc"
    rows = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 2 and '"clients": 3' in rows[-1] and '"failures": 0' in rows[-1]
    assert sorted(p.name for p in (run / "federation").glob("round_*")) == ["round_001.safetensors",
                                                                           "round_002.safetensors"]  # fmt: skip
    for k in (1, 2, 3):
        assert "Disconnect and shut down" in (tmp_path / "logs" / f"site{k}.log").read_text()
    assert (run / "test_metrics.json").is_file() and (run / "report.html").is_file()
    # The global model is a normal biomx run: predict reads it.
    out = tmp_path / "pred.csv"
    images = sorted((png_folder).rglob("*.png"))[:5]
    assert main(["predict", str(run), *map(str, images), "-o", str(out)]) == 0
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == 5


def test_a_site_that_dies_mid_round_is_dropped_and_the_federation_goes_on(tmp_path, png_folder, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # min_clients 2 of 3: a round goes on without one site; local_epochs long enough to die in.
    fed = write_federation(tmp_path, png_folder, "faulty", min_clients=2, local_epochs=10)
    command = [sys.executable, "-m", "biomx", "federate"]
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in ("server", "site1", "site2", "site3")}
    server = subprocess.Popen([*command, "server", str(fed)], stdout=logs["server"], stderr=subprocess.STDOUT)
    port = load_federation(fed)[0].port
    deadline = time.monotonic() + 120  # a site started before the server listens gives up at once
    while not port_open(port):
        assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
        time.sleep(0.1)
    sites = [subprocess.Popen([*command, "client", str(fed), "--site", str(k)], stdout=logs[f"site{k}"],
                              stderr=subprocess.STDOUT) for k in (1, 2, 3)]  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Received: train message" not in (tmp_path / "site3.log").read_text():
            assert time.monotonic() < deadline and sites[2].poll() is None, (tmp_path / "site3.log").read_text()
            time.sleep(0.05)
        sites[2].kill()  # mid-fit: no reply ever comes
        assert server.wait(timeout=180) == 0, (tmp_path / "server.log").read_text()
    finally:
        for proc in [server, *sites]:
            if proc.poll() is None:
                proc.kill()
        for f in logs.values():
            f.close()
    run = tmp_path / "runs" / "faulty"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # A round starts once 2 sites are in (3 if the third connected in time): site 3 dies in the
    # first round it joins, which aggregates the sites that answered; no round is lost.
    assert [r["epoch"] for r in rows] == [1, 2], rows
    assert sorted(r["failures"] for r in rows) == [0, 1], rows
    assert all(r["clients"] + r["failures"] >= 2 and r["clients"] >= 1 for r in rows), rows
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "test_metrics.json").is_file()


def test_fedavg_is_the_sample_weighted_mean_of_the_site_updates(tmp_path, png_folder):
    path = write_federation(tmp_path, png_folder, "mean", rounds=1)
    assert main(["federate", "simulate", str(path)]) == 0
    fed, cfg = load_federation(path)
    p = prepare(cfg)
    start = get_weights(build_global_model(p, fed.seed))
    updates, sizes = [], []
    for k in range(3):
        client = SiteClient(p, fed, k, site_rows(fed, p.splits, p.data.labels, k))
        new, n, _ = client.fit([w.copy() for w in start], {"server_round": 1})
        updates.append(new)
        sizes.append(n)
    assert len(set(sizes)) > 1  # unequal sites: a plain mean would differ
    weights, extra = load_checkpoint(tmp_path / "runs" / "mean" / "federation" / "round_001.safetensors")
    assert extra["round"] == 1
    keys = list(build_global_model(p, 0).state_dict())
    for i, key in enumerate(keys):
        if not np.issubdtype(start[i].dtype, np.floating):
            continue  # counters (num_batches_tracked)
        expected = sum(n * u[i].astype(np.float64) for n, u in zip(sizes, updates, strict=True)) / sum(sizes)
        np.testing.assert_allclose(weights[key].numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=key)
        assert not np.allclose(expected, start[i])  # the sites did train


def test_a_resumed_federation_equals_an_uninterrupted_one(tmp_path, png_folder):
    whole = write_federation(tmp_path, png_folder, "whole")
    assert main(["federate", "simulate", str(whole)]) == 0
    part = write_federation(tmp_path, png_folder, "part", rounds=1)
    assert main(["federate", "simulate", str(part)]) == 0
    part.write_text(part.read_text().replace("rounds: 1", "rounds: 2"))
    run = tmp_path / "runs" / "part"
    assert main(["federate", "simulate", str(part), "--resume", str(run)]) == 0
    a, _ = load_checkpoint(tmp_path / "runs" / "whole" / "checkpoints" / "best.safetensors")
    b, extra = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert extra["epoch"] == 2
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_fedprox_keeps_a_site_nearer_the_global_model(tmp_path, png_folder):
    path = write_federation(tmp_path, png_folder, "prox", strategy="fedprox", proximal_mu=1.0)
    fed, cfg = load_federation(path, ["train.optimizer.lr=0.01"])
    p = prepare(cfg)
    start = get_weights(build_global_model(p, fed.seed))
    client = SiteClient(p, fed, 2, site_rows(fed, p.splits, p.data.labels, 2))

    def drift(mu: float) -> float:
        new, _, _ = client.fit([w.copy() for w in start], {"server_round": 1, "proximal_mu": mu})
        return sum(float(((a - b) ** 2).sum()) for a, b in zip(new, start, strict=True) if a.dtype.kind == "f")

    assert drift(50.0) < 0.8 * drift(0.0)


def test_label_skew_cuts_disjoint_sites_with_different_label_mixes():
    labels = ["normal"] * 300 + ["pneumonia"] * 700
    rows = np.arange(1000)
    sites = partition(rows, labels, 3, "label_skew", 0.8)
    assert sorted(np.concatenate(sites).tolist()) == rows.tolist()
    normal = [float(np.mean(np.array(labels)[s] == "normal")) for s in sites]
    assert normal[0] > 0.6 > 0.2 > normal[2]  # site 1 mostly normal, site 3 mostly pneumonia
    even = partition(rows, labels, 3, "label_skew", 0.0)
    assert [round(float(np.mean(np.array(labels)[s] == "normal")), 2) for s in even] == [0.3, 0.3, 0.3]
    assert [len(s) for s in partition(rows, labels, 3, "contiguous", 0.8)] == [334, 333, 333]


def test_a_federation_file_typo_is_one_line(tmp_path, png_folder, capsys):
    path = write_federation(tmp_path, png_folder, "typo")
    path.write_text(path.read_text().replace("rounds:", "round:"))
    assert main(["federate", "simulate", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "round: unknown key; did you mean 'rounds'?" in err[0], err
    path.write_text(path.read_text().replace("round:", "rounds:").replace("sites: 3", "sites: 1"))
    assert main(["federate", "simulate", str(path)]) == 1
    assert "at least 2 sites" in capsys.readouterr().err
    path.write_text(path.read_text().replace("sites: 1", "sites: 3"))
    assert main(["federate", "simulate", str(path), "--set", "train.fairness={reweight: label}"]) == 1
    assert "train.fairness: not supported in a federation" in capsys.readouterr().err


def test_compare_scores_federated_each_site_and_pooled_on_one_test_split(tmp_path, png_folder, capsys):
    path = write_federation(tmp_path, png_folder, "cmp", rounds=1)
    assert main(["federate", "compare", str(path)]) == 0
    table = Path(capsys.readouterr().out.strip().splitlines()[-1].split(": ", 1)[1])
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["federated", "site1", "site2", "site3", "pooled"]
    sizes = [int(r["train_rows"]) for r in rows]
    assert sizes[0] == sizes[4] == sum(sizes[1:4]) and len(set(sizes[1:4])) > 1
    assert all(0.0 <= float(r["auroc"]) <= 1.0 for r in rows)
    for r in rows:  # "normal 30 / pneumonia 90": the label mix of the rows each model trained on
        assert sum(_counts(r).values()) == int(r["train_rows"])
    assert set(_counts(rows[4])) == {"normal", "pneumonia"}
    assert _share(rows[1], "normal") > _share(rows[4], "normal") > _share(rows[3], "normal")
    tests = {(table.parent / r["model"] / "split.csv").read_text() for r in rows}
    assert len(tests) == 1  # the same split (and test split) for every model


def _counts(row: dict[str, str]) -> dict[str, int]:
    return {name: int(n) for name, n in (part.rsplit(" ", 1) for part in row["labels"].split(" / "))}


def _share(row: dict[str, str], label: str) -> float:
    counts = _counts(row)
    return counts.get(label, 0) / sum(counts.values())


def test_a_federation_without_validation_rows_still_runs(tmp_path, png_folder):
    path = write_federation(tmp_path, png_folder, "noval", rounds=1)
    assert main(["federate", "simulate", str(path), "--set", "data.split.val=0"]) == 0
    row = json.loads((tmp_path / "runs" / "noval" / "metrics.jsonl").read_text())
    assert row["clients"] == 3 and "val_loss" not in row and row["train_loss"] > 0


def test_run_stops_with_one_line_when_a_site_cannot_start(tmp_path, png_folder, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Site 2's data folder does not exist: its client exits at once; the server would wait for it.
    path = write_federation(tmp_path, png_folder, "broken")
    text = path.read_text().replace("sites: 3", f"sites: [{{}}, {{overrides: ['data.path={tmp_path / 'nowhere'}']}}]")
    path.write_text(text)
    assert main(["federate", "run", str(path), "--logs", str(tmp_path / "logs")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "site 2 exited with 1" in err[0] and "site2.log" in err[0], err
    assert "nowhere" in (tmp_path / "logs" / "site2.log").read_text()


def private_federation(root: Path, png_folder: Path, name: str) -> Path:
    """The tiny federation with per-site DP at epsilon 8 (GroupNorm: DP-SGD needs per-sample gradients)."""
    path = write_federation(root, png_folder, name)
    exp = root / f"{name}_exp.yaml"
    private = "progress: false, privacy: {epsilon: 8, baseline: false}}"
    exp.write_text(exp.read_text().replace("depth: 2}", "depth: 2, norm: group}").replace("progress: false}", private))
    return path


def test_per_site_dp_spends_at_most_the_target_over_all_rounds(tmp_path, png_folder):
    path = private_federation(tmp_path, png_folder, "dp")
    assert main(["federate", "simulate", str(path)]) == 0
    run = tmp_path / "runs" / "dp"
    sites = json.loads((run / "privacy_sites.json").read_text())["sites"]
    assert sorted(sites) == ["1", "2", "3"]
    for site in sites.values():
        first, second = site["rounds"]
        assert (first["round"], second["round"]) == (1, 2)
        # The noise covers both rounds: round 2 ends at the target (a noise calibrated for one
        # round would spend 8 in each, and more in total); round 1 spends part of it.
        assert 0 < first["epsilon_rdp"] < second["epsilon_rdp"] <= 8 * 1.01
        assert 0 < first["epsilon_prv"] < second["epsilon_prv"] <= 8 * 1.01
        assert site["steps"] == site["planned_steps"] == 2 * (site["training_samples"] // 16) == second["steps"]
        assert site["history"] == [[site["noise_multiplier"], site["sample_rate"], site["steps"]]]
        assert site["epsilon_rdp"] == second["epsilon_rdp"]
    assert len({site["sample_rate"] for site in sites.values()}) == 3  # unequal sites, each calibrated for itself
    assert "Differential privacy per site" in (run / "report.html").read_text()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert not any(key.startswith("dp_") for key in row)  # a site's ledger is never averaged


def test_a_restarted_dp_site_goes_on_from_its_recorded_budget(tmp_path, png_folder):
    fed, cfg = load_federation(private_federation(tmp_path, png_folder, "dpsite"))
    p = prepare(cfg)
    rows = site_rows(fed, p.splits, p.data.labels, 1)
    start = get_weights(build_global_model(p, fed.seed))
    site = SiteClient(p, fed, 1, rows)
    first = site.fit([w.copy() for w in start], {"server_round": 1})[2]
    second = site.fit([w.copy() for w in start], {"server_round": 2})[2]
    assert first["dp_site"] == 2 and 0 < first["dp_epsilon_rdp"] < second["dp_epsilon_rdp"] <= 8 * 1.01
    # A new process for the same site, in round 2: the server's record of round 1 comes with the round.
    record = {"dp_sites": json.dumps({"2": json.loads(first["dp_history"])})}
    again = SiteClient(p, fed, 1, rows).fit([w.copy() for w in start], {"server_round": 2, **record})[2]
    assert again["dp_history"] == second["dp_history"] and again["dp_steps"] == second["dp_steps"]
    assert again["dp_epsilon_rdp"] == pytest.approx(second["dp_epsilon_rdp"])
    # No record (a resumed simulation): round 1 counts as trained; never a budget from zero.
    alone = SiteClient(p, fed, 1, rows).fit([w.copy() for w in start], {"server_round": 2})[2]
    assert alone["dp_history"] == second["dp_history"]
    with pytest.raises(ConfigError, match="strategy: fedprox is not supported with train.privacy"):
        SiteClient(p, fed.model_copy(update={"strategy": "fedprox", "proximal_mu": 0.1}), 1, rows)


def test_a_resumed_dp_federation_keeps_what_each_site_spent(tmp_path, png_folder):
    path = private_federation(tmp_path, png_folder, "dpres")
    path.write_text(path.read_text().replace("rounds: 2", "rounds: 1"))
    assert main(["federate", "simulate", str(path)]) == 0
    run = tmp_path / "runs" / "dpres"
    before = json.loads((run / "privacy_sites.json").read_text())["sites"]
    path.write_text(path.read_text().replace("rounds: 1", "rounds: 2"))  # one more round, new processes
    assert main(["federate", "simulate", str(path), "--resume", str(run)]) == 0
    after = json.loads((run / "privacy_sites.json").read_text())["sites"]
    for name, site in after.items():
        # Round 1 as it was spent (its own noise, from the server's record), then round 2's steps.
        assert site["history"][0] == before[name]["history"][0] and len(site["history"]) == 2
        assert [r["round"] for r in site["rounds"]] == [1, 2]
        assert site["rounds"][0] == before[name]["rounds"][0] and site["epsilon_rdp"] > before[name]["epsilon_rdp"]
