"""Real operating-system faults, made for real: a read-only file system and a full one (small
tmpfs mounts in a private mount namespace, `unshare -rm`), and a training process killed with
SIGKILL while it writes a checkpoint. Each must end in one line naming the path, a non-zero
exit, and nothing already written lost; the killed run must resume to the very weights of a
run that was never interrupted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biomx.cli import main
from biomx.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _can_mount() -> bool:
    """A private mount namespace is available (Linux with unprivileged user namespaces, or root)."""
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    done = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return done.returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount(), reason="no private mount namespace (unshare -rm) here")


def _config(path: Path, data: Path, out: Path, name: str, epochs: int = 1) -> Path:
    path.write_text(
        f"name: {name}\ndata: {{source: folder, path: {data}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        f"train: {{epochs: {epochs}, batch_size: 32, progress: false, num_workers: 0}}\n"
        f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {out}, name: {name}, tensorboard: false}}\n"
    )
    return path


# Runs inside the namespace: mounts the two file systems, then calls the CLI once per case and
# prints {case: [exit code, stderr]} as JSON. One process, so biomx is imported once.
FAULTS = r"""
import contextlib, io, json, os, subprocess, sys
from pathlib import Path
from biomx.cli import main

root, config_ro, config_full, inputs = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
ro, full = root / "ro", root / "full"

def mount(where, size, *, read_only=False, keep=None):
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    (where / "runs").mkdir()
    (where / "predictions.csv").write_text("id,earlier,results\n")  # a user's file already there
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)

def fill(where):  # leave no free block on the file system
    with open(where / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)

def cli(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return [code, err.getvalue()]

mount(ro, "1m", read_only=True)
mount(full, "64k")
out = {}
out["train-read-only"] = cli(["train", config_ro])
out["predict-read-only"] = cli(["predict", str(root / "run"), *inputs, "-o", str(ro / "predictions.csv")])
(full / "runs" / "existing.txt").write_text("keep me\n")
fill(full)
out["train-disk-full"] = cli(["train", config_full])
out["predict-disk-full"] = cli(["predict", str(root / "run"), *inputs, "-o", str(full / "predictions.csv")])
out["files-full"] = {str(p.relative_to(full)): p.read_bytes().decode("latin-1") for p in sorted(full.rglob("*"))
                     if p.is_file() and p.name != "filler"}
out["files-ro"] = sorted(str(p.relative_to(ro)) for p in ro.rglob("*"))
print(json.dumps(out))
"""


@needs_mounts
def test_read_only_and_full_file_systems_are_one_line_and_keep_what_is_there(tmp_path, png_folder):
    inputs = [str(p) for p in sorted(png_folder.rglob("*.png"))[:3]]
    assert main(["train", str(_config(tmp_path / "ok.yaml", png_folder, tmp_path, "run"))]) == 0
    config_ro = _config(tmp_path / "ro.yaml", png_folder, tmp_path / "ro" / "runs", "x")
    config_full = _config(tmp_path / "full.yaml", png_folder, tmp_path / "full" / "runs", "x")
    done = subprocess.run(["unshare", "-rm", sys.executable, "-c", FAULTS, str(tmp_path), str(config_ro),
                           str(config_full), *inputs], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {
        "train-read-only": (f"{tmp_path / 'ro' / 'runs' / 'x'}", "the file system is read-only"),
        "predict-read-only": (f"{tmp_path / 'ro' / 'predictions.csv'}", "the file system is read-only"),
        "train-disk-full": (f"{tmp_path / 'full' / 'runs' / 'x'}", "no space left on the device"),
        "predict-disk-full": (f"{tmp_path / 'full' / 'predictions.csv'}", "no space left on the device"),
    }
    for case, (path, reason) in expected.items():
        code, err = out[case]
        lines = err.strip().splitlines()
        assert code == 1 and "Traceback" not in err, (case, err)
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and path in errors[0] and reason in errors[0], (case, err)
    # Nothing that was there is lost or changed, no temp file is left, and what the failed run
    # managed to write is whole (every file is written atomically).
    files = out["files-full"]
    assert files["predictions.csv"] == "id,earlier,results\n"
    assert files["runs/existing.txt"] == "keep me\n"
    assert not [name for name in files if "biomx-tmp" in name], files
    if "runs/x/run.json" in files:
        assert json.loads(files["runs/x/run.json"])["name"] == "x"
    assert out["files-ro"] == ["predictions.csv", "runs"]


# A training process that SIGKILLs itself once the temp file of its second `last` checkpoint
# is written and flushed, but before it is renamed over the first.
KILL_DURING_WRITE = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
fsync, written = os.fsync, []

def fsync_then_die(fd):
    fsync(fd)
    name = os.readlink(f"/proc/self/fd/{fd}")
    if ".last.safetensors.biomx-tmp-" in name:
        written.append(name)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

os.fsync = fsync_then_die
from biomx.cli import main
sys.exit(main(["train", sys.argv[1]]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name the file being written")
def test_kill_during_a_checkpoint_write_resumes_to_the_uninterrupted_result(tmp_path, png_folder):
    reference = _config(tmp_path / "a.yaml", png_folder, tmp_path / "a", "run", epochs=3)
    assert main(["train", str(reference)]) == 0

    killed = _config(tmp_path / "b.yaml", png_folder, tmp_path / "b", "run", epochs=3)
    done = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(killed)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    stale = [p.name for p in checkpoints.iterdir() if "biomx-tmp" in p.name]
    assert len(stale) == 1 and stale[0].startswith(".last.safetensors.biomx-tmp-")  # killed mid-write
    _, extra = load_checkpoint(checkpoints / "last.safetensors")
    assert extra["trainer"]["epoch"] == 1  # the old checkpoint is whole: epoch 2's write never landed

    assert main(["train", "--resume", str(tmp_path / "b" / "run")]) == 0
    assert not [p.name for p in checkpoints.iterdir() if "biomx-tmp" in p.name]
    for name in ["last", "best"]:
        want, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoints" / f"{name}.safetensors")
        got, _ = load_checkpoint(checkpoints / f"{name}.safetensors")
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), name
    metrics = [json.loads(line) for line in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    a = json.loads((tmp_path / "a" / "run" / "test_metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "run" / "test_metrics.json").read_text())
    assert a == b  # the same test metrics, to the last digit


def test_os_error_naming_no_path_keeps_its_traceback():
    from biomx.errors import os_error_line

    assert os_error_line(OSError(28, "No space left on device")) is None
    line = os_error_line(OSError(30, "Read-only file system", "/data/runs/x"))
    assert line == "/data/runs/x: the file system is read-only: choose another output path"
