"""Data integrity: a run refuses data whose content changed, duplicates across splits are
reported (counts only), and NaN pixels in float images follow one declared policy."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from biomx.cli import main
from biomx.config import load_config
from biomx.data.splits import row_digests, shared_contents, warn_if_duplicated
from biomx.errors import DataError
from biomx.experiment import prepare
from biomx.modalities import get_modality
from biomx.modalities.image.decode import decode_images, read_image
from biomx.modalities.image.pipeline import load as load_images

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(path: Path, data: str) -> Path:
    path.write_text(
        f"name: t\ndata: {data}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 20, explain: 0}}\noutput: {{dir: {path.parent / 'runs'}, tensorboard: false}}\n"
    )
    return path


def _error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err)
    return err[-1]


@pytest.fixture(scope="module")
def png_run(tmp_path_factory, png_folder) -> tuple[Path, Path]:
    """(data folder, run) of a 1-epoch image run on a private copy of the PNG folder."""
    root = tmp_path_factory.mktemp("integrity")
    data = root / "data"
    shutil.copytree(png_folder, data)
    (data / "manifest.csv").unlink()
    cfg = _config(root / "exp.yaml", f"{{source: folder, path: {data}, image: {{size: [28, 28]}}}}")
    assert main(["train", str(cfg), "--set", "output.name=r"]) == 0
    return data, root / "runs" / "r"


# ---- 1. changed content -----------------------------------------------------------------------


def test_changed_file_is_refused_by_evaluate_and_resume(png_run, capsys):
    data, run = png_run
    rows = list(csv.DictReader(open(run / "split.csv")))
    assert all(len(row["sha256"]) == 64 for row in rows)
    metrics = (run / "test_metrics.json").read_bytes()
    changed = [Path(rows[5]["id"]), Path(rows[40]["id"])]  # the first in split.csv order is named
    for path in changed:
        pixels = np.asarray(Image.open(path))
        Image.fromarray(255 - pixels).save(path)  # same path, same size, new content
    capsys.readouterr()
    line = f"error: {changed[0]}: its content changed since this run was made (sha256 differs from split.csv); " \
           "start a new run"
    assert _error_line(capsys, ["evaluate", str(run)]) == line
    assert (run / "test_metrics.json").read_bytes() == metrics
    assert _error_line(capsys, ["train", "--resume", str(run)]) == line
    assert (run / "test_metrics.json").read_bytes() == metrics


# ---- 2. duplicates across splits -----------------------------------------------------------------


def test_duplicated_rows_across_splits_warn_with_counts_only(tmp_path, png_folder, capsys):
    rows = list(csv.DictReader(open(png_folder / "manifest.csv")))[:40]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as f:  # no patient column; every image listed three times
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for row in rows * 3:
            writer.writerow([png_folder / row["path"], row["label"]])
    cfg = _config(tmp_path / "exp.yaml", f"{{source: csv, path: {manifest}, image: {{size: [28, 28]}}, "
                                         "split: {method: random, val: 0.2, test: 0.2}}")
    capsys.readouterr()
    p = prepare(load_config(cfg))
    out = capsys.readouterr()
    text = out.out + out.err
    digests = get_modality("image").sample_digests(p.data)
    expected = warn_if_duplicated(digests, p.splits)
    capsys.readouterr()
    assert expected > 0
    warning = [line for line in text.splitlines() if "identical content" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert f"{expected} distinct inputs" in warning[0] and "train/test: " in warning[0]
    for row in rows:  # never an id: neither a path nor a file name
        assert Path(row["path"]).name not in text and Path(row["path"]).stem not in text


def test_shared_contents_counts_distinct_contents_per_pair():
    splits = {"train": np.array([0, 1, 2]), "val": np.array([3]), "test": np.array([4, 5])}
    digests = ["a", "a", "b", "a", "b", None]
    assert shared_contents(digests, splits) == {("train", "val"): 1, ("train", "test"): 1}
    assert warn_if_duplicated(digests, splits) == 2
    assert warn_if_duplicated(["a", "b", "c", "d", "e", "f"], splits) == 0
    assert warn_if_duplicated(None, splits) == 0


def test_row_digests_and_modality_digests(xrays):
    images = xrays[0][:10]
    same = row_digests(images.clone())
    assert same == row_digests(images) and len(set(same)) == len(set(map(bytes, images.numpy())))
    assert row_digests(images.float()) != same  # the dtype is part of the content
    from biomx.data.samples import Samples

    for name in ("image", "volume"):
        assert get_modality(name).sample_digests(Samples(images, [0] * 10, [str(i) for i in range(10)])) == same
        assert get_modality(name).sample_digests(Samples(object(), [0] * 10, [str(i) for i in range(10)])) is None


# ---- 3. NaN pixels ----------------------------------------------------------------------------


@pytest.fixture
def tiff_folder(tmp_path, xrays) -> tuple[Path, Path]:
    """(folder of float32 TIFFs per class, the one file with a NaN pixel)."""
    images, labels = xrays
    root = tmp_path / "tif"
    for i in range(40):
        folder = root / ("pneumonia" if labels[i] else "normal")
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"x{i:02d}.tif", images[i, 0].numpy().astype(np.float32) * 10.0)
    bad = sorted(root.rglob("*.tif"))[7]
    pixels = tifffile.imread(bad)
    pixels[3, 4] = np.nan
    tifffile.imwrite(bad, pixels)
    return root, bad


def test_nan_pixel_raises_by_default_and_zero_is_declared(tiff_folder):
    root, bad = tiff_folder
    message = f"{bad}: 1 of 784 pixels are NaN or infinite; fix the file or set data.image.nan_policy: zero"
    with pytest.raises(DataError) as err:
        read_image(bad)
    assert str(err.value) == message
    zeroed = read_image(bad, nan_policy="zero")
    assert zeroed[0, 3, 4] == 0 and zeroed.max() == 1.0 and (zeroed > 0).mean() > 0.5  # not a blank image
    images, kept, failures = decode_images([bad], size=(28, 28), channels=1, on_error="skip")
    assert kept == [] and failures == [(str(bad), message.removeprefix(f"{bad}: "))]

    cfg = _config(root.parent / "exp.yaml", f"{{source: folder, path: {root}, image: {{size: [28, 28]}}}}")
    with pytest.raises(DataError) as err:  # training load
        load_images(load_config(cfg).data)
    assert str(err.value) == message
    samples = load_images(load_config(cfg, ["data.image.nan_policy=zero"]).data)
    row = samples.inputs[samples.ids.index(str(bad))].float()
    assert row[0, 3, 4] == 0 and row.max() == 1.0


def test_predict_follows_the_runs_nan_policy(png_run, tiff_folder, tmp_path, capsys):
    _, run = png_run
    _, bad = tiff_folder
    info = json.loads((run / "run.json").read_text())
    assert info["preprocessing"]["nan_policy"] == "raise"
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert _error_line(capsys, ["predict", str(run), str(bad), "-o", str(out)]) == \
        f"error: {bad}: 1 of 784 pixels are NaN or infinite; fix the file or set data.image.nan_policy: zero"

    preprocessing = dict(info["preprocessing"])
    del preprocessing["nan_policy"]  # a run made before the policy: raise
    with pytest.raises(DataError, match="NaN or infinite"):
        get_modality("image").read_inputs(preprocessing, [bad])

    root = bad.parent.parent  # a run that declared nan_policy: zero predicts the file
    cfg = _config(tmp_path / "exp.yaml", f"{{source: folder, path: {root}, image: {{size: [28, 28], nan_policy: zero}}, "
                                         "split: {method: random}}")
    assert main(["train", str(cfg), "--set", "output.name=z", "--set", "train.batch_size=8"]) == 0
    assert json.loads((tmp_path / "runs" / "z" / "run.json").read_text())["preprocessing"]["nan_policy"] == "zero"
    assert main(["predict", str(tmp_path / "runs" / "z"), str(bad), "-o", str(out)]) == 0
    assert [row["path"] for row in csv.DictReader(open(out))] == [str(bad)]
