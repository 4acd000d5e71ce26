"""Two "nodes" on one machine: two torchrun launchers (c10d rendezvous, one process each) train like
one process with the same global batch; `biomx predict` under torchrun shards its inputs and writes
the file a single process writes.

Each launcher is a separate process tree, as on two machines; only the rendezvous endpoint (a free
port on 127.0.0.1) and the run folder are shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biomx.cli import main
from servers import free_port, train_image_run

HERE = Path(__file__).parent
TIMEOUT_S = 240


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}


def _launch_two(args: list[str], cwds: tuple[Path, Path]) -> list[tuple[int, str]]:
    """`torchrun --nnodes 2 --node-rank R` twice (in its own folder each): (exit code, console) each.
    The c10d store is hosted by whichever launcher binds the port first; the other retries until
    it answers, so neither needs to wait for the other."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node, cwd in enumerate(cwds):
        log = cwd / f"node{node}.log"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-id", "biomx-test", "--max-restarts", "0", *args]  # fmt: skip
        with log.open("w") as out:
            procs.append((subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [(proc.returncode, log.read_text()) for proc, log in procs]


def _two_nodes(args: list[str], cwd: Path) -> None:
    """Both launchers in `cwd` must exit 0 (their consoles quoted if not)."""
    for node, (code, console) in enumerate(_launch_two(args, (cwd, cwd))):
        assert code == 0, f"node {node}:\n{console[-3000:]}"


def _config(tmp_path: Path, png_folder: Path, name: str) -> Path:
    """A tiny run without BatchNorm or dropout (per-rank batch statistics and dropout masks differ
    from one big batch by design), so two ranks of 8 compute what one rank of 16 does."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"name: {name}\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2, norm: none, dropout: 0.0}}\n"
        "train: {epochs: 2, batch_size: 16, device: cpu, progress: false, grad_clip: null}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    return config


@pytest.mark.slow
def test_two_nodes_train_like_one_process(tmp_path, png_folder):
    # The same weights on both ranks, step by step: each rank saves its own replica (tests/dist_train.py).
    _two_nodes([str(HERE / "dist_train.py"), str(tmp_path / "nodes")], tmp_path)
    rank0 = load_file(tmp_path / "nodes" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "nodes" / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    # `biomx train` across the two nodes against one process with the same global batch.
    _two_nodes(["-m", "biomx", "train", str(_config(tmp_path, png_folder, "nodes"))], tmp_path)
    assert main(["train", str(_config(tmp_path, png_folder, "single"))]) == 0
    nodes, single = tmp_path / "runs" / "nodes", tmp_path / "runs" / "single"
    curves = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (nodes, single)]
    assert len(curves[0]) == len(curves[1]) == 2  # one line per epoch, written once (rank 0)
    # Same samples per global step; only the order of float sums differs (gloo's all-reduce of the
    # two half-batch gradients against one sum over 16): ~1e-6 relative per step, so 1e-4 is loose
    # while a wrong shard, a doubled step or an unaveraged gradient moves the loss by > 1e-2.
    for key in ("train_loss", "val_loss"):
        torch.testing.assert_close(torch.tensor([e[key] for e in curves[0]]), torch.tensor([e[key] for e in curves[1]]),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    last = [load_file(run / "checkpoints" / "last.safetensors") for run in (nodes, single)]
    assert last[0]["state.rng.torch"].shape[0] == 2  # both nodes' RNG streams, gathered for --resume
    weights = [key for key in last[1] if key.startswith("model.")]
    assert weights
    for key in weights:
        torch.testing.assert_close(last[0][key], last[1][key], rtol=1e-3, atol=1e-5)
    assert json.loads((nodes / "test_metrics.json").read_text())["n"] == 24


@pytest.mark.slow
def test_predict_under_torchrun_writes_one_ordered_file(tmp_path, png_folder):
    run = train_image_run(tmp_path, png_folder, "two_members", ensemble=2)  # two members: *_std columns too
    assert main(["predict", str(run), str(png_folder), "--output", str(tmp_path / "single.csv")]) == 0
    merged = tmp_path / "merged.csv"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "biomx", "predict", str(run), str(png_folder), "--output", str(merged)]  # fmt: skip
    result = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert merged.read_text() == (tmp_path / "single.csv").read_text()
    assert len(merged.read_text().splitlines()) == 161  # a header and the 160 X-rays, each once
    assert result.stderr.count("wrote 160 predictions") == 1  # rank 0 alone writes and says so
    assert not list(tmp_path.glob("merged.csv.*"))  # no partial or per-rank leftovers


@pytest.mark.slow
def test_a_run_folder_the_nodes_do_not_share_is_one_line(tmp_path, png_folder):
    # A relative output.dir from two working folders: what two machines without a shared filesystem see.
    config = _config(tmp_path, png_folder, "apart")
    config.write_text(config.read_text().replace(f"dir: {tmp_path / 'runs'}", "dir: runs"))
    cwds = (tmp_path / "a", tmp_path / "b")
    for cwd in cwds:
        cwd.mkdir()
    results = _launch_two(["-m", "biomx", "train", str(config)], cwds)
    for code, console in results:  # every rank stops with the same line; none waits for the others
        assert code != 0
        assert "error: output.dir: runs/apart is not shared by every process" in console, console[-3000:]
        # (torchrun then reports the failed child with a traceback of its own)
