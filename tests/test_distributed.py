"""Two CPU processes under torchrun (gloo) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


@pytest.mark.slow
@pytest.mark.parametrize("ema", [[], ["0.9"]], ids=["plain", "ema"])  # ema: the final weights are the average
def test_two_processes_match_one(tmp_path, ema):
    _run(_torchrun(str(HERE / "dist_train.py"), str(tmp_path / "ddp"), *ema), tmp_path)
    _run([sys.executable, str(HERE / "dist_train.py"), str(tmp_path / "single"), *ema], tmp_path)

    rank0, rank1 = load_file(tmp_path / "ddp" / "rank0.safetensors"), load_file(tmp_path / "ddp" / "rank1.safetensors")
    for key in rank0:  # DDP keeps replicas identical
        assert torch.equal(rank0[key], rank1[key]), key

    ddp = json.loads((tmp_path / "ddp" / "losses0.json").read_text())
    single = json.loads((tmp_path / "single" / "losses0.json").read_text())
    assert len(ddp["steps"]) == len(single["steps"]) == 14  # 448 samples / 64 x 2 epochs
    # Same samples per global step, so the same loss curve up to float summation order.
    torch.testing.assert_close(torch.tensor(ddp["steps"]), torch.tensor(single["steps"]), rtol=1e-3, atol=1e-4)
    # Validation metrics are gathered from both ranks: identical to the single process.
    for key in ("val_loss", "val_auroc"):
        assert ddp["history"][-1][key] == pytest.approx(single["history"][-1][key], abs=1e-3)
    reference = load_file(tmp_path / "single" / "rank0.safetensors")
    for key in reference:
        torch.testing.assert_close(rank0[key], reference[key], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_torchrun_cli_writes_one_run(tmp_path, png_folder):
    config = tmp_path / "exp.yaml"
    config.write_text(
        f"name: ddp\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 16, device: cpu}\neval: {bootstrap: 50, explain: 2}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: ddp}}\n"
    )
    _run(_torchrun("-m", "biomx", "train", str(config)), tmp_path)
    run = tmp_path / "runs" / "ddp"
    assert (run / "report.html").is_file() and (run / "checkpoints" / "last.safetensors").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((run / "test_metrics.json").read_text())["n"] == 24  # 15% of 160
