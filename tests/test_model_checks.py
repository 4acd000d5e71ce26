"""Model arguments and checkpoints a user got wrong: one line, exit 1, nothing half-written.

A bad model.args (negative width, a depth that pools a 28 px image to nothing) is found by
running the model on one real sample before the run folder exists; a resume that changes the
model is refused before training; a checkpoint whose header claims more tensor bytes than the
file holds, or that names an unknown modality, is refused naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from biomx.cli import main
from biomx.engine.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(path: Path, png_folder: Path, args: str, name: str = "") -> Path:
    output = f"{{dir: {path.parent / 'runs'}, tensorboard: false{', name: ' + name if name else ''}}}"
    path.write_text(
        f"name: t\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        f"model: {{name: small_cnn, args: {args}}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 10, explain: 0}}\noutput: {output}\n"
    )
    return path


def _fails(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, png_folder) -> Path:
    """A tiny real run: a 1-epoch small CNN of width 4 on 160 X-ray PNGs."""
    root = tmp_path_factory.mktemp("model_checks")
    assert main(["train", str(_config(root / "exp.yaml", png_folder, "{width: 4, depth: 2}", "tiny"))]) == 0
    return root / "runs" / "tiny"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the tiny run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.mark.parametrize(("args", "says"), [
    ("{width: -5}", "error: model.args.width: small_cnn takes an integer from 1 to 1024; got -5"),  # its declared range
    ("{width: 4, depth: 6}",  # within range, but 28 px / 2**5 < 1: found by trying the model on a real sample
     "error: model.args: small_cnn cannot run on this data (input shape (1, 1, 28, 28)): "),
])  # fmt: skip
def test_bad_model_args_leave_no_run(tmp_path, png_folder, capsys, args, says):
    line = _fails(capsys, ["train", str(_config(tmp_path / "exp.yaml", png_folder, args))])
    assert line.startswith(says) and len(line) < 400
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_with_changed_model_is_refused(run, capsys):
    before = _files(run)
    line = _fails(capsys, ["train", "--resume", str(run), "--set", "model.args.width=8"])
    assert line == (f"error: {run}: the checkpoint does not fit model.args {{width: 8}} (saved with {{width: 4}}); "
                    "resume without changing the model")  # fmt: skip
    assert _files(run) == before


@pytest.mark.parametrize("damage", ["forged", "truncated", "short"])
def test_checkpoint_header_claiming_too_much_is_refused(run, png_folder, capsys, damage):
    best = run / "checkpoints" / "best.safetensors"
    data = best.read_bytes()
    if damage == "forged":  # a shape that would need 360 GB, in a file of a few hundred bytes
        header = json.dumps({"model.0.weight": {"dtype": "F32", "shape": [300000, 300000, 1000],
                                                "data_offsets": [0, 16]}}).encode()  # fmt: skip
        best.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    elif damage == "truncated":
        best.write_bytes(data[:-1000])
    else:
        best.write_bytes(data[:5])
    inputs = [str(p) for p in sorted(png_folder.rglob("*.png"))[:2]]
    line = _fails(capsys, ["predict", str(run), *inputs])
    assert line.startswith(f"error: {best}: not a readable biomx checkpoint (its header is corrupt: claims ")
    if damage == "forged":
        assert "claims 360000000000000 bytes of tensors; the file has 16 after its header" in line


def test_unknown_modality_in_checkpoint_names_the_run(run, png_folder, capsys):
    for name in ("best", "last"):
        path = run / "checkpoints" / f"{name}.safetensors"
        weights, extra = load_checkpoint(path)
        extra["model_config"]["modality"] = "imgae"
        save_checkpoint(path, weights, extra)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "modality": "imgae"}))
    inputs = [str(p) for p in sorted(png_folder.rglob("*.png"))[:2]]
    line = _fails(capsys, ["predict", str(run), *inputs])
    assert line.startswith(f"error: {run / 'checkpoints' / 'best.safetensors'}: ")
    assert "'imgae'" in line and "image" in line
