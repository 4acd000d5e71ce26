"""Secure aggregation (`secure_aggregation:` in the federation file): Flower's SecAgg+ between the
sites and the server, on the embedded chest X-rays. The server sees only the masked sum, so the
global model must equal plain FedAvg of the same site updates up to SecAgg+'s quantisation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from biomx.cli import main
from biomx.engine.checkpoint import load_checkpoint
from biomx.experiment import prepare
from biomx.federated.client import SiteClient
from biomx.federated.config import load_federation
from biomx.federated.sites import site_rows
from biomx.federated.weights import build_global_model, get_weights
from test_federated import write_federation

pytestmark = pytest.mark.usefixtures("one_thread")

SECURE = "{num_shares: 3, reconstruction_threshold: 2, clipping_range: 8.0, quantization_range: 4194304}"


def test_secure_aggregation_equals_fedavg_of_the_same_site_updates_to_quantisation(tmp_path, png_folder):
    path = write_federation(tmp_path, png_folder, "secagg", secure_aggregation=SECURE)
    assert main(["federate", "simulate", str(path)]) == 0
    run = tmp_path / "runs" / "secagg"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["clients"] == 3 and r["failures"] == 0 for r in rows)
    assert "val_loss" in rows[-1]

    # Round 1 from the same initial weights: the sites' own updates, averaged by their row counts.
    fed, cfg = load_federation(path)
    p = prepare(cfg)
    start = get_weights(build_global_model(p, fed.seed))
    updates, sizes = [], []
    for k in range(3):
        new, n, _ = SiteClient(p, fed, k, site_rows(fed, p.splits, p.data.labels, k)).fit(
            [w.copy() for w in start], {"server_round": 1})  # fmt: skip
        updates.append(new)
        sizes.append(n)
    # Each site sends round(w * n/max_weight) on a grid of step 2 * clipping_range / quantization_range
    # (stochastic rounding: at most one step off); the server divides the sum by sum(n)/max_weight.
    s = fed.secure_aggregation
    step = 2 * s.clipping_range / s.quantization_range
    bound = len(sizes) * step / (sum(sizes) / s.max_weight)
    weights, _ = load_checkpoint(run / "federation" / "round_001.safetensors")
    worst = 0.0
    for i, key in enumerate(build_global_model(p, 0).state_dict()):
        got = weights[key].numpy()
        assert got.dtype == start[i].dtype, key  # the model's own dtypes, not SecAgg+'s float64
        if start[i].dtype.kind != "f":
            continue
        expected = sum(n * u[i].astype(np.float64) for n, u in zip(sizes, updates, strict=True)) / sum(sizes)
        assert np.abs(expected).max() < s.clipping_range  # nothing clipped: only quantisation differs
        # Each site's weight n/max_weight is itself rounded to 1/quantization_range, which moves the
        # mean by at most that over sum(n)/max_weight times the sites' spread; float32 storage adds
        # half an ulp.
        spread = max(float(np.abs(u[i] - expected).max()) for u in updates)
        tolerance = bound + spread * len(sizes) / s.quantization_range / (sum(sizes) / s.max_weight)
        tolerance = tolerance + np.abs(expected) * 2**-24
        error = np.abs(got - expected)
        assert (error <= tolerance).all(), (key, float(error.max()), bound)
        worst = max(worst, float(error.max()))
    assert 0 < worst  # masked and quantised: not bit-identical to the plain mean
    print(f"secagg: largest difference from FedAvg {worst:.2e} (bound {bound:.2e})")

    # The global model is a normal biomx run: predict reads it.
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, sorted(png_folder.rglob("*.png"))[:4]), "-o", str(out)]) == 0
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == 4


@pytest.mark.parametrize(("setting", "message"), [
    ("{num_shares: 2}", "num_shares: a count must be more than 2"),
    ("{num_shares: 3, reconstruction_threshold: 3}", "reconstruction_threshold: 3 must be less than num_shares"),
    ("{num_shares: 5}", "secure_aggregation.num_shares: 5 is more than the 3 sites"),
    ("{clipping: 4}", "secure_aggregation.clipping: unknown key"),
])  # fmt: skip
def test_a_secure_aggregation_mistake_is_one_line(tmp_path, png_folder, capsys, setting, message):
    path = write_federation(tmp_path, png_folder, "bad", secure_aggregation=setting)
    assert main(["federate", "simulate", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.slow
def test_secure_aggregation_runs_as_superlink_and_supernode_processes(tmp_path, png_folder, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a SuperLink, SuperNodes and a process per message
    path = write_federation(tmp_path, png_folder, "deployed", sites=2, rounds=1, secure_aggregation="true")
    logs = tmp_path / "logs"
    assert main(["federate", "run", str(path), "--logs", str(logs)]) == 0
    run = tmp_path / "runs" / "deployed"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["clients"], r["failures"]) for r in rows] == [(1, 2, 0)]
    assert "Secure aggregation completed" in (logs / "server.log").read_text()
    assert (run / "checkpoints" / "best.safetensors").is_file() and (run / "test_metrics.json").is_file()
    for k in (1, 2):
        assert "Start `flwr-clientapp` process" in (logs / f"site{k}.log").read_text()


def test_no_site_update_reaches_the_server_in_the_clear(tmp_path, png_folder):
    """Every training reply a site sends the server, at each of SecAgg+'s four stages, holds no
    arrays: the weights travel only as one masked integer vector per site (bytes)."""
    from flwr.app import Context, RecordDict
    from flwr.client.mod.secure_aggregation.secaggplus_mod import RECORD_KEY_CONFIGS
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    from biomx.federated.app import run_server, site_app
    from biomx.federated.local_grid import LocalGrid
    from biomx.federated.simulation import site_clients

    path = write_federation(tmp_path, png_folder, "clear", rounds=1, secure_aggregation="true")
    fed, cfg = load_federation(path)
    p = prepare(cfg)
    clients = site_clients(fed, cfg, p)
    seen = []

    class Recording(LocalGrid):
        def pull_messages(self, message_ids):  # noqa: ANN001, ANN202
            replies = list(super().pull_messages(message_ids))
            seen.extend(replies)
            return replies

    grid = Recording(site_app(lambda site: clients[site - 1].to_client()), 3)
    run_server(fed, p, None, grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    train = [m for m in seen if m.metadata.message_type == "train"]
    assert len(train) == 3 * 4  # four SecAgg+ stages per site
    assert all(len(record) == 0 for m in train for record in m.content.array_records.values())
    masked = [m.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS] for m in train
              if Key.MASKED_PARAMETERS in m.content.config_records.get(RECORD_KEY_CONFIGS, {})]  # fmt: skip
    assert len(masked) == 3 and all(isinstance(b, bytes) for vectors in masked for b in vectors)


def test_a_resumed_secure_federation_goes_on_from_its_last_round(tmp_path, png_folder):
    whole = write_federation(tmp_path, png_folder, "whole", secure_aggregation="true")
    assert main(["federate", "simulate", str(whole)]) == 0
    part = write_federation(tmp_path, png_folder, "part", rounds=1, secure_aggregation="true")
    assert main(["federate", "simulate", str(part)]) == 0
    part.write_text(part.read_text().replace("rounds: 1", "rounds: 2"))
    run = tmp_path / "runs" / "part"
    assert main(["federate", "simulate", str(part), "--resume", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    a, _ = load_checkpoint(tmp_path / "runs" / "whole" / "checkpoints" / "best.safetensors")
    b, extra = load_checkpoint(run / "checkpoints" / "best.safetensors")
    assert extra["epoch"] == 2
    for key in a:  # the same rounds, up to SecAgg+ quantisation (about 1e-4 a round here)
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=0, atol=1e-3, err_msg=key)
