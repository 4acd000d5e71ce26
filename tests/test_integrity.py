"""Bad files and bad targets get one line naming the file, never a wrong answer or a lost file:
a checkpoint with flipped tensor bytes, a diverged (NaN) model, an output path that is a symlink,
FIFO or folder, a write killed half-way."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from biomx.cli import main
from biomx.engine.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from biomx.errors import BiomxError
from biomx.runs import load_run_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _fails(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, png_folder) -> Path:
    """A tiny real run: a 1-epoch small CNN on 160 X-ray PNGs."""
    root = tmp_path_factory.mktemp("integrity")
    cfg = root / "exp.yaml"
    cfg.write_text(
        f"name: t\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: tiny, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / "tiny"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the tiny run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture(scope="module")
def inputs(png_folder) -> list[str]:
    return [str(p) for p in sorted(png_folder.rglob("*.png"))[:3]]


def _rewrite_weights(checkpoint: Path, change) -> None:
    weights, extra = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, {k: change(v) if v.is_floating_point() else v for k, v in weights.items()}, extra)


def test_flipped_tensor_bytes_are_refused(run, inputs, capsys):
    best = run / "checkpoints" / "best.safetensors"
    data = bytearray(best.read_bytes())
    data[-5] ^= 0x40  # the last tensor's bytes; the header (and so the file's structure) is intact
    best.write_bytes(bytes(data))
    with pytest.raises(BiomxError, match="checkpoint is corrupt"):
        load_checkpoint(best)
    line = _fails(capsys, ["predict", str(run), *inputs])
    assert line == f"error: {best}: checkpoint is corrupt (tensor data does not match its checksum); " \
        "it changed after it was written: restore it from a copy or train again"


def test_checkpoint_without_checksum_still_loads(run, inputs, capsys):
    """Checkpoints written before checksums existed load unchecked and predict as before."""
    best = run / "checkpoints" / "best.safetensors"
    capsys.readouterr()
    assert main(["predict", str(run), *inputs]) == 0
    before = capsys.readouterr().out
    with safe_open(str(best), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert "biomx_sha256" in metadata
    save_file(tensors, str(best), metadata={"biomx": metadata["biomx"]})  # as an old biomx wrote it
    load_checkpoint(best)
    assert main(["predict", str(run), *inputs]) == 0
    assert capsys.readouterr().out == before


def test_nan_weights_are_refused(run, inputs, capsys):
    best = run / "checkpoints" / "best.safetensors"
    _rewrite_weights(best, lambda w: torch.full_like(w, float("nan")))
    message = f"{best}: the model's weights are not finite (NaN/Inf): the run diverged; " \
        "lower train.optimizer.lr and train again"
    with pytest.raises(BiomxError) as err:
        load_run_model(run)
    assert str(err.value) == message
    assert _fails(capsys, ["predict", str(run), *inputs]) == f"error: {message}"


def test_non_finite_outputs_name_the_first_input(run, inputs, capsys):
    """Finite but huge weights overflow to Inf/NaN in the forward pass: refused, not labelled."""
    _rewrite_weights(run / "checkpoints" / "best.safetensors", lambda w: torch.full_like(w, 3e38))
    line = _fails(capsys, ["predict", str(run), *inputs])
    assert line.startswith(f"error: {inputs[0]}: the model's output is not finite (NaN/Inf)")


def test_training_a_diverging_run_does_not_fail_on_the_check(tmp_path, png_folder):
    """The refusal is for prediction: training (and saving) a run that diverges still works."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"name: t\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\noutput: {{dir: {tmp_path / 'runs'}, name: nan, tensorboard: false}}\n"
    )
    try:
        main(["train", str(cfg), "--set", "train.optimizer.lr=1e30"])
    except BaseException as err:  # pragma: no cover - a crash would be a bug in training
        pytest.fail(f"training a diverging run raised {err!r}")
    weights, _ = load_checkpoint(tmp_path / "runs" / "nan" / "checkpoints" / "last.safetensors")
    assert weights  # the checkpoint was written and reads back (its checksum matches)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_output_that_is_not_a_regular_file_is_refused_and_untouched(run, inputs, tmp_path, capsys, kind):
    target, victim = tmp_path / "out.csv", tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    names = {"symlink": "symbolic link", "fifo": "named pipe (FIFO)", "folder": "folder"}
    if kind == "symlink":
        target.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
        (target / "inside.txt").write_text("keep\n")
    before = os.lstat(target)
    message = f"{target}: exists and is not a regular file (a {names[kind]}); choose another output path"
    assert _fails(capsys, ["predict", str(run), *inputs, "-o", str(target)]) == f"error: {message}"
    with pytest.raises(BiomxError) as err:
        atomic_write_text(target, "new\n")
    assert str(err.value) == message
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert victim.read_text() == "keep me\n"
    if kind == "folder":
        assert [p.name for p in target.iterdir()] == ["inside.txt"]
    assert not [p for p in tmp_path.iterdir() if "biomx-tmp" in p.name]


def test_output_under_a_file_is_one_line(run, inputs, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    line = _fails(capsys, ["predict", str(run), *inputs, "-o", str(tmp_path / "file.txt" / "out.csv")])
    assert line == f"error: {tmp_path / 'file.txt' / 'out.csv'}: cannot write: {tmp_path / 'file.txt'} " \
        "is not a folder; choose another output path"


def test_regular_output_is_replaced_and_missing_folder_made(tmp_path):
    target = tmp_path / "new" / "out.csv"
    atomic_write_text(target, "one\n")
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    assert os.listdir(target.parent) == ["out.csv"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_permission_denied_is_one_line_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "ro" / "out.csv"
    atomic_write_text(target, "old\n")
    target.parent.chmod(0o500)
    try:
        with pytest.raises(BiomxError, match=r"out.csv: cannot write \(permission denied"):
            atomic_write_text(target, "new\n")
    finally:
        target.parent.chmod(0o700)
    assert target.read_text() == "old\n"
    assert os.listdir(target.parent) == ["out.csv"]


def test_a_killed_write_leaves_one_temp_file_that_the_next_write_removes(tmp_path):
    target = tmp_path / "last.safetensors"
    save_checkpoint(target, {"w": torch.ones(4)}, {"epoch": 1})
    killed = (  # a real write killed half-way: the temp file is made and filled, never renamed
        "import os, signal, sys\nfrom pathlib import Path\nfrom biomx.engine.checkpoint import _open_temp\n"
        "fd, tmp = _open_temp(Path(sys.argv[1]))\nos.write(fd, b'x' * 100000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", killed, str(target)])
    assert result.returncode == -signal.SIGKILL
    stale = [p.name for p in tmp_path.iterdir() if p.name != target.name]
    assert len(stale) == 1 and stale[0].startswith(".last.safetensors.biomx-tmp-")
    save_checkpoint(target, {"w": torch.zeros(4)}, {"epoch": 2})
    assert os.listdir(tmp_path) == ["last.safetensors"]
    weights, extra = load_checkpoint(target)
    assert extra["epoch"] == 2 and weights["w"].sum() == 0


def test_checkpoint_mode_is_that_of_any_new_file(tmp_path):
    save_checkpoint(tmp_path / "best.safetensors", {"w": torch.ones(2)}, {})
    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "run.json", "{}")
    mode = os.stat(tmp_path / "plain.txt").st_mode
    assert os.stat(tmp_path / "best.safetensors").st_mode == mode
    assert os.stat(tmp_path / "run.json").st_mode == mode


def test_trained_run_files_share_one_mode(trained):
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in [trained / "run.json", *trained.glob("checkpoints/*")]}
    assert len(set(modes.values())) == 1, modes
