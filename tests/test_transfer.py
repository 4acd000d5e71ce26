"""Fine-tuning (biomx.engine.transfer): a tiny CNN trained one epoch on real chest X-rays starts a
3-class run; matching tensors come from the parent, the head is new, frozen parameters do not move,
lr multipliers become optimizer groups, a resumed fine-tune loads its own checkpoint, model.reinit
restarts layers whose shapes match, and a bad init_from / reinit (or init_from with model.name:
auto) is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from biomx.cli import main
from biomx.config import load_config
from biomx.engine.checkpoint import load_checkpoint
from biomx.engine.optim import build_optimizer, build_scheduler
from biomx.engine.transfer import parent_weights, start, transfer_sections
from biomx.errors import ConfigError
from biomx.experiment import resume_run
from biomx.models.registry import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "model: {name: small_cnn, args: {width: 4, depth: 2, norm: group}%s}\n"


def _write(root: Path, name: str, data: Path, *, model: str = "", train: str = "", epochs: int = 1) -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {data}, image: {{size: [28, 28]}}}}\n" + MODEL % model
        + f"train: {{epochs: {epochs}, batch_size: 16, progress: false{train}}}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )  # fmt: skip
    return cfg


def _train(root: Path, name: str, data: Path, **kw) -> Path:
    assert main(["train", str(_write(root, name, data, **kw))]) == 0
    return root / "runs" / name


def _three_classes(png_folder: Path, root: Path) -> Path:
    """The same real X-rays in three class folders: another task (a 3-class head)."""
    out = root / "three"
    files = sorted(png_folder.rglob("*.png"))
    for i, f in enumerate(files):
        target = out / "abc"[i % 3] / f"{i}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, target)
    return out


@pytest.fixture(scope="module")
def parent(tmp_path_factory, png_folder) -> Path:
    return _train(tmp_path_factory.mktemp("parent"), "parent", png_folder)


def test_fine_tune_reuses_matching_layers_freezes_and_scales_lr(tmp_path, png_folder, parent):
    three = _three_classes(png_folder, tmp_path)
    parent_state, _ = load_checkpoint(parent / "checkpoints" / "best.safetensors")
    cfg = load_config(_write(tmp_path, "child", three, model=f", init_from: {parent}",
                             train=", freeze: ['0'], lr_multipliers: {'3': 0.1}"))  # fmt: skip
    model = build_model("small_cnn", in_channels=1, out_dim=3, width=4, depth=2, norm="group")
    info = start(model, cfg, None)
    state = model.state_dict()
    assert info["reused"] and info["mismatched"]  # the 3-class head cannot come from a binary parent
    for k in info["reused"]:
        assert torch.equal(state[k], parent_state[k])
    for k in info["mismatched"]:
        assert state[k].shape != parent_state[k].shape
    assert info["head"] == info["mismatched"]
    assert info["frozen"] == ["0.weight"] and not model.get_parameter("0.weight").requires_grad
    opt = build_optimizer(model, cfg.train.optimizer, cfg.train.lr_multipliers)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.get_parameter("3.weight"))] == pytest.approx(0.1 * cfg.train.optimizer.lr)
    assert lrs[id(model.get_parameter("1.weight"))] == pytest.approx(cfg.train.optimizer.lr)
    assert id(model.get_parameter("0.weight")) not in lrs  # frozen: not in the optimizer
    scheduler = build_scheduler(opt, cfg.train.schedule, 10, 5)  # the schedule scales each group's own lr
    for _ in range(3):
        opt.step()
        scheduler.step()
    lrs = [g["lr"] for g in opt.param_groups if g["params"]]
    assert min(lrs) == pytest.approx(0.1 * max(lrs)) and max(lrs) != pytest.approx(cfg.train.optimizer.lr)

    # The whole run: frozen weights equal the parent's after an epoch; the report names the reuse.
    run = _train(tmp_path, "child_run", three, model=f", init_from: {parent}",
                 train=", freeze: [backbone], lr_multipliers: {'0': 0.5}")  # fmt: skip
    child_state, extra = load_checkpoint(run / "checkpoints" / "last.safetensors")
    info = json.loads((run / "transfer.json").read_text())
    assert set(info["frozen"]) and not set(info["frozen"]) & set(info["head"])
    for k in info["frozen"]:
        assert torch.equal(child_state[k], parent_state[k])
    for k in info["head"]:
        assert child_state[k].shape != parent_state[k].shape
    assert "Fine-tuning" in (run / "report.html").read_text()

    # Resume: train on from the run's own checkpoint (one more epoch), not from init_from.
    before = child_state
    resume_run(run, ["train.epochs=2"])
    after, extra2 = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert extra2["trainer"]["epoch"] == 2 and extra["trainer"]["epoch"] == 1
    for k in info["frozen"]:
        assert torch.equal(after[k], before[k])
    assert any(not torch.equal(after[k], before[k]) for k in info["head"])


def test_bad_init_from_and_prefixes_are_one_line(tmp_path, png_folder, parent):
    pt = tmp_path / "weights.pt"
    pt.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        parent_weights(pt)
    with pytest.raises(ConfigError, match="no checkpoint"):
        parent_weights(tmp_path)
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    cfg = _write(tmp_path, "bad", png_folder, model=f", init_from: {other}")
    assert main(["train", str(cfg)]) != 0
    assert not (tmp_path / "runs" / "bad").exists()  # checked before any run file is written
    cfg = _write(tmp_path, "bad1", png_folder, train=", lr_multipliers: {'head': 2}")
    assert main(["train", str(cfg)]) != 0 and not (tmp_path / "runs" / "bad1").exists()
    cfg = load_config(_write(tmp_path, "bad2", png_folder, model=f", init_from: {parent}", train=", freeze: [nope]"))
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=4, depth=2, norm="group")
    with pytest.raises(ConfigError, match="train.freeze: 'nope' matches no parameter"):
        start(model, cfg, None)


def test_a_dp_fine_tune_on_the_same_data_inherits_its_parents_budget(tmp_path, png_folder):
    privacy = ", privacy: {{epsilon: 4, baseline: false, budget_file: {}}}"
    parent = _train(tmp_path, "dp_parent", png_folder, train=privacy.format(tmp_path / "parent_book.json"))
    child = _train(tmp_path, "dp_child", png_folder, model=f", init_from: {parent}",
                   train=privacy.format(tmp_path / "child_book.json"))  # fmt: skip
    ledger = json.loads((child / "privacy.json").read_text())
    assert json.loads((child / "transfer.json").read_text())["privacy"]["inherited"] is True
    assert ledger["runs_on_same_data"] == 2  # the child's own book: itself and the inherited parent
    assert ledger["epsilon_total_rdp"] > ledger["epsilon_rdp"]


def test_reinit_restarts_the_head_and_named_layers_even_where_shapes_match(tmp_path, png_folder, parent):
    parent_state, _ = load_checkpoint(parent / "checkpoints" / "best.safetensors")
    cfg = load_config(_write(tmp_path, "re", png_folder, model=f", init_from: {parent}, reinit: [head, '0']"))
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=4, depth=2, norm="group")
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    info = start(model, cfg, None)
    state = model.state_dict()
    assert not info["mismatched"]  # binary -> binary: every shape fits, the head would be reused
    last = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]  # small_cnn's classifier
    head = [f"{last}.weight", f"{last}.bias"]
    assert info["reinit"] == [*(k for k in state if k.startswith("0.")), *head]
    assert info["head"] == info["reinit"]  # freeze [backbone] leaves every restarted layer trainable
    for k in info["reinit"]:  # kept their fresh initialisation, not the parent's
        assert torch.equal(state[k], fresh[k]) and not torch.equal(state[k], parent_state[k])
    assert info["reused"] and not set(info["reused"]) & set(info["reinit"])
    for k in info["reused"]:
        assert torch.equal(state[k], parent_state[k])

    # The whole run: transfer.json and the report's section name the restarted layers.
    run = _train(tmp_path, "re_run", png_folder, model=f", init_from: {parent}, reinit: [head]")
    saved = json.loads((run / "transfer.json").read_text())
    assert saved["reinit"] == head and saved["head"] == head
    section = transfer_sections(run)[0]
    assert "2 restarted by model.reinit" in section["text"]
    assert [k for k, origin, _ in section["table"]["rows"] if origin == "new (model.reinit)"] == head


def test_bad_reinit_and_init_from_with_auto_are_one_line(tmp_path, png_folder, parent, capsys):
    cfg = load_config(_write(tmp_path, "re1", png_folder, model=f", init_from: {parent}, reinit: [nope]"))
    model = build_model("small_cnn", in_channels=1, out_dim=1, width=4, depth=2, norm="group")
    with pytest.raises(ConfigError, match="model.reinit: 'nope' matches no layer; module names: 0, "):
        start(model, cfg, None)
    for name, extra, message in [
        ("re2", f", init_from: {parent}, reinit: [nope]", "model.reinit: 'nope' matches no layer"),
        ("re3", ", reinit: [head]", "model.reinit: only with model.init_from"),
        ("re4", f", init_from: {parent}, candidates: [small_cnn]", "model.init_from: not with model.name: auto"),
    ]:
        path = _write(tmp_path, name, png_folder, model=extra)
        if name == "re4":
            auto = "name: auto, args: {small_cnn: {width: 4, depth: 2, norm: group}}"
            path.write_text(path.read_text().replace("name: small_cnn, args: {width: 4, depth: 2, norm: group}", auto))
        capsys.readouterr()
        assert main(["train", str(path)]) != 0
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "runs" / name).exists()  # refused before any run file is written
