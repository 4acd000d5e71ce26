"""Test-time augmentation for images (`data.image.tta`): predictions average over flipped views,
so a run trained with it predicts the same for an image and its mirror, in PyTorch and ONNX."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from biomx.cli import main
from biomx.models.image2d import FlipAveraged
from servers import export


def test_flip_averaged_is_the_mean_over_every_flip_combination():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 10, 3))  # not flip-invariant
    x = torch.randn(2, 1, 8, 12)
    assert not torch.allclose(net(x), net(x.flip(-1)))
    both = FlipAveraged(net, ["hflip", "vflip"])
    expected = (net(x) + net(x.flip(-1)) + net(x.flip(-2)) + net(x.flip([-1, -2]))) / 4
    torch.testing.assert_close(both(x), expected)
    for dims in ([-1], [-2], [-1, -2]):
        torch.testing.assert_close(both(x.flip(dims)), both(x), rtol=1e-5, atol=1e-6)
    horizontal = FlipAveraged(net, ["hflip"])
    torch.testing.assert_close(horizontal(x.flip(-1)), horizontal(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(horizontal(x.flip(-2)), horizontal(x), atol=1e-4)


def _train(root: Path, pngs: Path, name: str, tta: str) -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {pngs}, image: {{size: [28, 28], tta: {tta}}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


def _mirrored(pngs: Path, out: Path, n: int = 12) -> tuple[Path, Path]:
    """n of the X-rays as they are, and mirrored left-right, under the same file names."""
    files = sorted(pngs.rglob("*.png"))[:n]
    for folder, mirror in (("plain", False), ("mirror", True)):
        (out / folder).mkdir(parents=True)
        for f in files:
            pixels = np.asarray(Image.open(f))
            Image.fromarray(pixels[:, ::-1].copy() if mirror else pixels).save(out / folder / f.name)
    return out / "plain", out / "mirror"


def _probabilities(run: Path, folder: Path, out: Path, *engine: str) -> np.ndarray:
    assert main(["predict", str(run), str(folder), "-o", str(out), *engine]) == 0
    with out.open() as f:
        rows = sorted(csv.DictReader(f), key=lambda r: Path(r["path"]).name)
    column = next(k for k in rows[0] if k.startswith("prob"))
    return np.array([float(r[column]) for r in rows])


@pytest.mark.slow
def test_a_tta_run_predicts_the_same_for_an_image_and_its_mirror(tmp_path, png_folder, monkeypatch):
    monkeypatch.setenv("BIOMX_CACHE", str(tmp_path / "cache"))
    plain, mirror = _mirrored(png_folder, tmp_path / "inputs")
    with_tta = _train(tmp_path, png_folder, "tta", "[hflip]")
    without = _train(tmp_path, png_folder, "plain", "[]")
    a, b = (_probabilities(with_tta, f, tmp_path / f"tta-{f.name}.csv") for f in (plain, mirror))
    np.testing.assert_allclose(a, b, atol=2e-6)
    c, d = (_probabilities(without, f, tmp_path / f"plain-{f.name}.csv") for f in (plain, mirror))
    assert np.abs(c - d).max() > 1e-4  # without tta the mirror changes the prediction
    export(with_tta)  # the flips go into the ONNX graph (the export checks it against PyTorch)
    e = _probabilities(with_tta, mirror, tmp_path / "onnx.csv", "--engine", "onnx")
    np.testing.assert_allclose(e, a, atol=1e-4)
