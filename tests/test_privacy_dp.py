"""DP-SGD (train.privacy) on real chest X-rays: the run trains, the ledger spends at most the
target, a resumed run continues the accountant, and what DP-SGD cannot train is refused in one line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from biomx.cli import main
from biomx.config import TrainConfig, load_config
from biomx.engine.trainer import Trainer, TrainingInterrupted
from biomx.errors import ConfigError
from biomx.models.registry import build_model
from biomx.privacy.ledger import within_budget

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(root: Path, png_folder: Path, name: str, model_args: str = "{width: 4, depth: 2, norm: group}",
            privacy: str = "{epsilon: 8, delta: 1.0e-5, max_grad_norm: 1.0, baseline: false}", train: str = "",
            epochs: int = 2) -> Path:  # fmt: skip
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        f"model: {{name: small_cnn, args: {model_args}}}\n"
        f"train: {{epochs: {epochs}, batch_size: 16, progress: false, privacy: {privacy}{train}}}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    return cfg


def test_a_dp_run_writes_a_ledger_within_its_budget(tmp_path, png_folder):
    cfg = _config(tmp_path, png_folder, "dp")
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "dp"
    ledger = json.loads((run / "privacy.json").read_text())
    rows = ledger["epochs"]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["steps"] < rows[1]["steps"] == ledger["steps"] == ledger["planned_steps"]
    assert 0 < rows[0]["epsilon_rdp"] < rows[1]["epsilon_rdp"] and 0 < rows[0]["epsilon_prv"] < rows[1]["epsilon_prv"]
    assert ledger["accountant"] == "rdp" and within_budget(ledger) and ledger["epsilon"] == rows[1]["epsilon_rdp"]
    assert rows[1]["epsilon_prv"] <= rows[1]["epsilon_rdp"] * 1.05  # PRV is the tighter bound
    assert ledger["noise_multiplier"] > 0 and ledger["history"] == [[ledger["noise_multiplier"],
                                                                     ledger["sample_rate"], ledger["steps"]]]
    assert "Differential privacy" in (run / "report.html").read_text()
    assert (run / "test_metrics.json").is_file()


def _one_line_error(capsys, cfg: Path) -> str:
    assert main(["train", str(cfg)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_batchnorm_is_refused_in_one_line_naming_the_layer(tmp_path, png_folder, capsys):
    cfg = _config(tmp_path, png_folder, "bn", model_args="{width: 4, depth: 2, norm: batch}",
                  privacy="{epsilon: 8, batchnorm: refuse, baseline: false}")
    err = _one_line_error(capsys, cfg)
    assert "small_cnn has BatchNorm (layer '1')" in err and err.endswith("set model.args.norm: group"), err
    assert not (tmp_path / "runs" / "bn").exists()  # refused before any run file


def test_what_dp_sgd_cannot_do_is_refused_in_one_line(tmp_path, png_folder, capsys):
    err = _one_line_error(capsys, _config(tmp_path, png_folder, "acc", train=", accumulate: 2"))
    assert err.startswith("error: train.accumulate: not supported with train.privacy"), err
    cfg = _config(tmp_path, png_folder, "ens")
    cfg.write_text(cfg.read_text().replace("norm: group}", "norm: group}, ensemble: 2"))
    err = _one_line_error(capsys, cfg)
    assert err.startswith("error: model.ensemble: not supported with train.privacy"), err


def test_a_privacy_typo_says_one_line(tmp_path, png_folder):
    cfg = _config(tmp_path, png_folder, "typo", privacy="{epsilonn: 8}")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    line = str(err.value)
    assert line.startswith("train.privacy: unknown key 'epsilonn'; did you mean 'epsilon'?"), line
    assert len(line.splitlines()) == 1


class _Batches(torch.utils.data.Dataset):
    """X-rays as the modalities' datasets serve them: whole batches through __getitems__."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.x, self.y = images.float() / 255, labels.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def _trainer(data, run_dir: Path, stop_at: int | None = None) -> Trainer:
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, out_dim=2, width=4, depth=2, norm="group")
    settings = TrainConfig(epochs=2, batch_size=32, progress=False, privacy={"epsilon": 4, "accountant": "prv"})

    def stop(trainer: Trainer) -> None:
        if trainer.state["step"] == stop_at:
            trainer.request_stop("test")

    return Trainer(model, torch.nn.functional.cross_entropy, data, settings=settings, run_dir=run_dir,
                   collate_fn=lambda batch: batch, tensorboard=False, step_hook=stop)  # fmt: skip


def test_a_resumed_dp_run_continues_the_accountant(tmp_path, xrays):
    data = _Batches(xrays[0][:320], xrays[1][:320])
    whole = _trainer(data, tmp_path / "whole")
    whole.fit()
    steps_per_epoch = whole.privacy.steps_per_epoch
    cut = _trainer(data, tmp_path / "cut", stop_at=steps_per_epoch + 3)  # mid-way through epoch 2
    with pytest.raises(TrainingInterrupted):
        cut.fit()
    resumed = _trainer(data, tmp_path / "cut")
    resumed.fit(resume=True)
    a = json.loads((tmp_path / "whole" / "privacy.json").read_text())
    b = json.loads((tmp_path / "cut" / "privacy.json").read_text())
    assert b["steps"] == a["steps"] == 2 * steps_per_epoch  # steps accumulate across the resume
    assert b["epochs"] == a["epochs"] and b["noise_multiplier"] == a["noise_multiplier"]
    assert within_budget(b) and b["epsilon"] == b["epsilon_prv"]
    # The same Poisson batches and the same noise: the resumed model is the uninterrupted one.
    for p, q in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_a_layer_without_per_sample_gradients_is_named():
    """The zoo's DNA CNN-LSTM: Opacus has no per-sample gradient for a plain nn.LSTM."""
    from biomx.privacy.dp import check_model

    with pytest.raises(ConfigError) as err:
        check_model(build_model("danq"), "danq")
    line = str(err.value)
    assert line.startswith("model.name: danq cannot be trained with DP-SGD") and "layer 'lstm'" in line, line
    assert len(line.splitlines()) == 1
    check_model(build_model("deepsea"), "deepsea")  # convolutions only: accepted


def test_batchnorm_is_converted_and_the_twin_without_dp_sits_beside_it(tmp_path, png_folder, capsys):
    """small_cnn's default BatchNorm becomes norm: group (run.json), the run trains 1 epoch, its
    non-private twin trains into without_privacy/, the report compares them, predict works on both,
    and a resumed run never retrains a finished twin."""
    cfg = _config(tmp_path, png_folder, "conv", model_args="{width: 4, depth: 2}", privacy="{epsilon: 8}", epochs=1)
    assert main(["train", str(cfg)]) == 0
    assert "BatchNorm layer(s) replaced by model.args.norm: group" in capsys.readouterr().err
    run = tmp_path / "runs" / "conv"
    twin = run / "without_privacy"
    info = json.loads((run / "run.json").read_text())["model"]
    assert info["args"]["norm"] == "group" and json.loads((twin / "run.json").read_text())["model"] == info
    assert "privacy: null" in (twin / "config.yaml").read_text() and not (twin / "privacy.json").exists()
    report = (run / "report.html").read_text()
    assert "Utility cost of differential privacy" in report and "training time (s)" in report
    for path in (run, twin):
        out = tmp_path / f"{path.name}.csv"
        assert main(["predict", str(path), str(png_folder / "normal"), "-o", str(out)]) == 0
        assert len(out.read_text().splitlines()) > 5
    assert main(["evaluate", str(run)]) == 0  # rebuilt from run.json: norm: group, not the config's BatchNorm
    rows = (twin / "metrics.jsonl").read_text()
    stamp = (twin / "report.html").stat().st_mtime_ns
    assert main(["train", "--resume", str(run)]) == 0  # finished twin: neither retrained nor re-evaluated
    assert (twin / "metrics.jsonl").read_text() == rows and (twin / "report.html").stat().st_mtime_ns == stamp
    (twin / "report.html").unlink()  # as if stopped after its last checkpoint: resumed, not started again
    assert main(["train", "--resume", str(run)]) == 0
    assert (twin / "metrics.jsonl").read_text() == rows and (twin / "report.html").is_file()


def test_a_model_without_a_norm_argument_gets_groupnorm_recorded_in_run_json():
    """MONAI's ResNet: every BatchNorm swapped for GroupNorm after building, recorded as
    "batchnorm": "group" (rebuilt by build_recorded), and per-sample gradients run through its
    in-place residual adds."""
    import opacus

    from biomx.models.norms import GroupNormOut, batchnorm_layers, groups_for
    from biomx.models.registry import build_recorded
    from biomx.privacy.dp import check_model, convert_batchnorm

    assert [groups_for(c) for c in (3, 12, 16, 64, 256, 48)] == [1, 2, 4, 16, 32, 8]
    info = convert_batchnorm({"name": "resnet18", "args": {"in_channels": 1, "out_dim": 1}})
    assert info["batchnorm"] == "group" and info["args"] == {"in_channels": 1, "out_dim": 1}
    model = build_recorded(info)
    assert not batchnorm_layers(model) and model.layer1[0].bn2.norm.num_groups == 16
    assert isinstance(model.layer4[0].bn1, GroupNormOut) and model.layer4[0].bn1.norm.num_groups == 32
    check_model(model, "resnet18")
    hooked = opacus.GradSampleModule(model, loss_reduction="mean")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the input needs no gradient
    hooked(torch.randn(2, 1, 28, 28)).sum().backward()
    assert model.conv1.weight.grad_sample.shape[0] == 2
    state = build_recorded(info).state_dict()
    assert set(state) == set(model.state_dict()) and not any("running_mean" in k for k in state)
    small = {"name": "small_cnn", "args": {"width": 4, "depth": 2}}
    assert convert_batchnorm(small)["args"]["norm"] == "group"  # the builder's own argument first
    assert convert_batchnorm({"name": "deepsea", "args": {}}) == {"name": "deepsea", "args": {}}  # none to convert


def test_how_a_twin_is_restarted(tmp_path):
    """Finished (report written): skipped; a checkpoint: resumed; a folder that never saved: started again."""
    from biomx.privacy.baseline import twin_resume

    twin = tmp_path / "without_privacy"
    assert twin_resume(twin) is None  # none yet
    (twin / "checkpoints").mkdir(parents=True)
    (twin / "run.json").write_text("{}")
    assert twin_resume(twin) is None and not twin.exists()  # crashed before its first checkpoint: removed
    (twin / "checkpoints").mkdir(parents=True)
    (twin / "checkpoints" / "last.safetensors").write_bytes(b"")
    assert twin_resume(twin) == twin
    (twin / "report.html").write_text("")
    assert twin_resume(twin) is False
