"""train.strategy: fsdp under torchrun on CPU (gloo): sharded training, sharded checkpoints that
resume on another number of ranks, full weights for everything downstream, and the refusals.

One run is trained for 1 epoch on 2 ranks and resumed to 2 epochs twice, on 1 rank (in this
process) and on 3 ranks; both must end where one uninterrupted 2-epoch run ends. The model has no
BatchNorm or dropout (per-rank batch statistics and dropout masks differ with the number of ranks
by design) and the learning rate is constant (a run of 1 epoch extended to 2 would otherwise have
followed another schedule), so the global batches and the updates are the same whatever the
number of ranks.
"""

from __future__ import annotations

import csv
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from biomx.cli import main
from biomx.config import FairnessConfig, TrainConfig
from biomx.engine import fsdp
from biomx.engine.checkpoint import load_checkpoint
from biomx.engine.trainer import Trainer
from biomx.errors import BiomxError, ConfigError
from biomx.modalities.common.tensor_dataset import ImageTensorDataset
from biomx.models.registry import build_model

TIMEOUT_S = 240


def _torchrun(ranks: int, args: list[str], cwd: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           "-m", "biomx", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]


def _config(tmp_path: Path, png_folder: Path, name: str, epochs: int, extra: str = "") -> Path:
    """120 training X-rays in global batches of 24: 5 steps per epoch on 1, 2 or 3 ranks (8 each on 3)."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"name: {name}\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2, norm: none, dropout: 0.0}}\n"
        f"train: {{epochs: {epochs}, batch_size: 24, device: cpu, progress: false, strategy: fsdp, "
        f"schedule: {{name: constant}}, optimizer: {{lr: 0.01}}{extra}}}\n"
        "eval: {bootstrap: 0, explain: 1}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    return config


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "checkpoints" / "last.safetensors").items() if k.startswith("model.")}


def _probabilities(path: Path, column: str) -> dict[str, float]:
    with path.open() as f:
        return {Path(row[column]).name: float(row["prob_pneumonia"]) for row in csv.DictReader(f)}


@pytest.mark.slow
def test_fsdp_trains_and_resumes_on_another_number_of_ranks(tmp_path, png_folder):
    _torchrun(2, ["train", str(_config(tmp_path, png_folder, "sharded", epochs=1))], tmp_path)
    run = tmp_path / "runs" / "sharded"

    # Sharded state: one folder with each rank's shard, named by last.safetensors (the commit point).
    weights, extra = load_checkpoint(run / "checkpoints" / "last.safetensors")
    folder = run / "checkpoints" / extra["sharded"]["folder"]
    assert sorted(p.name for p in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == [folder.name]  # no leftovers
    assert extra["world_size"] == 2 and extra["rng"]["torch"].shape[0] == 2 and "optimizer" not in extra

    # best.safetensors holds full, unsharded weights: a plain model loads them strictly...
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=8, depth=2, norm="none", dropout=0.0)
    best = {k.removeprefix("model."): v for k, v in load_file(run / "checkpoints" / "best.safetensors").items()}
    assert {k: v.shape for k, v in best.items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(best, strict=True)
    assert set(weights) == set(best)
    # ... and `biomx predict` (one process, that file) gives what the run's own evaluation gave under
    # torchrun (the trainer's unsharded copy after training): the same numbers to the CSV's 6 digits.
    assert main(["predict", str(run), str(png_folder), "--output", str(tmp_path / "predicted.csv")]) == 0
    during = _probabilities(run / "predictions_test.csv", "id")
    after = _probabilities(tmp_path / "predicted.csv", "path")
    assert len(during) == 24
    for name, value in during.items():
        assert after[name] == pytest.approx(value, abs=2e-6), name

    # Resume to 2 epochs on 1 rank (here, unsharded) and on 3 ranks (DCP reshards 2 -> 3, uneven).
    one, three = tmp_path / "runs" / "one", tmp_path / "runs" / "three"
    shutil.copytree(run, one)
    shutil.copytree(run, three)
    assert main(["train", "--resume", str(one), "--set", "train.epochs=2"]) == 0
    _torchrun(3, ["train", "--resume", str(three), "--set", "train.epochs=2"], tmp_path)
    assert main(["train", str(_config(tmp_path, png_folder, "straight", epochs=2))]) == 0
    straight = _weights(tmp_path / "runs" / "straight")
    first = _weights(run)
    moved = max(float((straight[k] - first[k]).abs().max()) for k in straight)
    assert moved > 1e-3  # epoch 2 changed the weights; resuming without the optimizer state would not match
    # Same samples per global step and the same Adam state: only the order of float sums differs
    # (gloo's reduce-scatter of 2 or 3 partial gradients against one sum), ~1e-7 here; 1e-5 is loose,
    # while a lost optimizer state, a shifted sampler or a wrong shard moves the weights by > 1e-3.
    for resumed in (one, three):
        final = _weights(resumed)
        for key in straight:
            torch.testing.assert_close(final[key], straight[key], rtol=1e-4, atol=1e-5, msg=f"{resumed.name} {key}")
        assert [json_row["epoch"] for json_row in load_checkpoint(resumed / "checkpoints" / "last.safetensors")[1]
                ["history"]] == [1, 2]  # fmt: skip
    _, extra3 = load_checkpoint(three / "checkpoints" / "last.safetensors")
    assert extra3["world_size"] == 3 and len(list((three / "checkpoints" / extra3["sharded"]["folder"]).glob("*.distcp"))) == 3


def test_refused_with_dp_solver_and_fairness(tmp_path, png_folder, capsys):
    extra = ", privacy: {epsilon: 8, baseline: false}"
    assert main(["train", str(_config(tmp_path, png_folder, "private", epochs=1, extra=extra))]) != 0
    err = capsys.readouterr().err
    assert "error: train.strategy: fsdp cannot be combined with train.privacy (DP-SGD" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before any run file is written

    data = ImageTensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4))
    solver = build_model("svm", feature_dim=8, out_dim=1, fingerprint_dim=8)
    with pytest.raises(ConfigError, match="^train.strategy: fsdp: model 'KernelSVM' is fitted by a solver in one call"):
        Trainer(solver, torch.nn.functional.mse_loss, data, settings=TrainConfig(strategy="fsdp", device="cpu"))
    fair = TrainConfig(strategy="fsdp", device="cpu", fairness=FairnessConfig(reweight="sex"))
    with pytest.raises(ConfigError, match="^train.strategy: fsdp cannot be combined with train.fairness"):
        Trainer(torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, data, settings=fair)


def test_resuming_with_the_other_strategy_is_one_line(tmp_path, png_folder, capsys):
    config = _config(tmp_path, png_folder, "ddp", epochs=1)
    config.write_text(config.read_text().replace("strategy: fsdp", "strategy: ddp"))
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "runs" / "ddp"), "--set", "train.epochs=2",
                 "--set", "train.strategy=fsdp"]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "saved with train.strategy: ddp; resume with the same strategy (got fsdp)" in err and "Traceback" not in err


def test_metadata_is_read_only_as_biomx_wrote_it(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    folder = tmp_path / "sharded-0123456789abcdef"
    folder.mkdir()
    (folder / ".metadata").write_bytes(pickle.dumps(Payload()))
    owner = tmp_path / "last.safetensors"
    with pytest.raises(BiomxError, match=r"\.metadata is not a biomx checkpoint's \(posix.system is not part"):
        fsdp.read_metadata(folder, None, owner)
    with pytest.raises(BiomxError, match="changed after it was written"):
        fsdp.read_metadata(folder, "0" * 64, owner)
    assert not (tmp_path / "owned").exists()
    # What DCP itself writes reads back: a one-process save of a tensor.
    import torch.distributed.checkpoint as dcp

    real = tmp_path / "real"
    with pytest.warns(UserWarning, match="single process"):
        dcp.save({"w": torch.ones(3)}, storage_writer=dcp.FileSystemWriter(real), no_dist=True)
    metadata = fsdp.read_metadata(real, None, owner)
    assert list(metadata.state_dict_metadata) == ["w"]


def test_even_shards_give_every_rank_the_same_number_of_batches():
    shards = [fsdp.EvenShardSampler(16, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [6, 6, 6]
    assert sorted(i for s in shards for i in s.indices) == list(range(16))
    assert list(shards[2]) == [2, 5, 8, 11, 14, 0]  # padded with sample 0, dropped by the caller
