"""The export plans of the sequence, tabular, history, volume and molecule modalities: the raw
tensor a client outside Python sends, and `prepare`, the tensor ops that turn it into exactly
what the run's datasets (and `read_inputs`) give the model, traceable with a dynamic batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from biomx.config import validate
from biomx.errors import ExportRefused
from biomx.experiment import Prepared, prepare
from biomx.modalities import get_modality
from biomx.protocols import ExportableModality, ExportPlan
from data_paths import DNA, MEDMNIST

pytestmark = pytest.mark.usefixtures("one_thread")


def _prepared(modality: str, data: dict[str, Any], tmp_path: Path, **changes: Any) -> Prepared:
    raw = {"name": "x", "data": {"modality": modality, **data},
           "model": {"name": "mlp"}, "task": {"type": "binary"},
           "train": {"epochs": 1, "device": "cpu", "progress": False},
           "output": {"dir": str(tmp_path / "runs"), "tensorboard": False}}  # fmt: skip
    return prepare(validate(raw | changes))


def _batch(p: Prepared, split: str) -> torch.Tensor:
    x, _ = p.datasets[split].__getitems__(list(range(len(p.splits[split]))))
    return getattr(x, "features", x)  # a molecule batch carries its vectors as .features


def _check_plan(p: Prepared, split: str = "test") -> tuple[ExportPlan, torch.Tensor]:
    """(a) prepare(raw_rows) is the split's batch, (c) prepare exports with a dynamic batch."""
    modality = get_modality(p.info["modality"])
    assert isinstance(modality, ExportableModality)
    pre = p.info["preprocessing"]
    plan = modality.export_plan(pre)
    raw = modality.raw_rows(pre, p.data, p.splits[split])
    assert str(raw.dtype).removeprefix("torch.") == plan.input.dtype
    assert plan.input.shape[0] == "batch" and len(plan.input.shape) == raw.ndim
    assert all(isinstance(n, str) or n == size for n, size in zip(plan.input.shape[1:], raw.shape[1:], strict=True))
    expected = _batch(p, split)
    got = plan.prepare(raw)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    exported = torch.export.export(
        plan.prepare, (raw,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    torch.testing.assert_close(exported.module()(raw[:3]), expected[:3], atol=1e-5, rtol=1e-5)
    assert plan.outside and plan.inside and plan.input.description
    json.dumps(plan.example)  # the sidecar carries it
    return plan, raw


# ------------------------------------------------------------------------------------ sequence


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    """40 real Oct4 and 40 real Mafk windows; a few shortened, soft-masked or with ambiguity codes."""
    root = tmp_path_factory.mktemp("seq")
    for name, src in (("oct4.fa", DNA / "sample.fa"), ("mafk.fa", DNA / "sample2.fa")):
        lines = src.read_text().splitlines()[:80]
        seqs = lines[1::2]
        seqs[0] = seqs[0][:150]  # padded
        seqs[1] = seqs[1][:20].lower() + "NNRY" + seqs[1][24:]
        (root / name).write_text(
            "".join(f"{h}\n{s}\n" for h, s in zip(lines[::2], seqs, strict=True))
        )
    return root


def test_sequence_plan_one_hot_inside(fasta: Path, tmp_path: Path) -> None:
    data = {"source": "fasta", "path": str(fasta), "sequence": {"files": {"Oct4": "oct4.fa", "Mafk": "mafk.fa"},
            "length": 180, "rc_augment": True, "shift": 3}, "split": {"method": "random", "val": 0.2, "test": 0.5}}  # fmt: skip
    p = _prepared("sequence", data, tmp_path, model={"name": "deepsea", "args": {"width": 8}},
                  task={"classes": ["Mafk", "Oct4"]})  # fmt: skip
    plan, raw = _check_plan(p)
    assert (
        plan.input.dtype == "int64"
        and plan.example["vocabulary"]["N"] == 4
        and plan.example["pad"] == 255
    )
    assert raw.max() == 255  # the shortened record is padded (and centre-cropped ones are 180 long)
    # An id outside the table is read as padding, not an error.
    assert plan.prepare(torch.full((1, 180), 999))[0].abs().sum() == 0
    # (b) read_raw then prepare is read_inputs.
    sequence = get_modality("sequence")
    pre = p.info["preprocessing"]
    files = [fasta / "oct4.fa", fasta / "mafk.fa"]
    raw_files, names, failures = sequence.read_raw(pre, files)
    x, names_in, _ = sequence.read_inputs(pre, files)
    assert names == names_in and not failures and raw_files.dtype == torch.int64
    torch.testing.assert_close(plan.prepare(raw_files), x, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------ tabular


@pytest.fixture(scope="module")
def clinical(tmp_path_factory) -> Path:
    """60 patients: numbers with gaps, a boolean, text categories (one level only in new rows)."""
    rng = np.random.default_rng(0)
    rows = ["id,age,crp,smoker,sex,site,stage,outcome"]
    for i in range(60):
        age = "" if i % 7 == 3 else f"{rng.normal(60, 12):.1f}"
        crp = "" if i % 5 == 1 else f"{rng.lognormal(1.5, 1.0):.3f}"
        smoker = ["yes", "no", ""][i % 3]
        site = ["oslo", "lyon", "", "pisa"][i % 4]
        rows.append(f"p{i},{age},{crp},{smoker},{'FM'[i % 2]},{site},{1 + i % 4},{['dead', 'alive'][i % 2]}")
    path = tmp_path_factory.mktemp("tab") / "clinical.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_tabular_plan_encodes_inside(clinical: Path, tmp_path: Path) -> None:
    data = {"source": "csv", "path": str(clinical), "label_column": "outcome",
            "tabular": {"id_column": "id", "cache": False, "columns": {"stage": "categorical"}},
            "split": {"method": "random", "val": 0.2, "test": 0.3}}  # fmt: skip
    p = _prepared("tabular", data, tmp_path, model={"name": "tabular_mlp", "args": {"width": 8, "depth": 1}})
    plan, raw = _check_plan(p)
    names = [f["name"] for f in plan.example["features"]]
    assert names == ["age", "crp", "smoker", "sex", "site", "stage"] and torch.isnan(raw).any()
    levels = plan.example["features"][names.index("site")]["levels"]
    assert "" not in levels and set(levels) <= {"oslo", "lyon", "pisa"}
    # (b) new rows: an unseen site and stage, a missing value, read from a file.
    new = tmp_path / "new.csv"
    new.write_text("id,age,crp,smoker,sex,site,stage\nq1,51.5,,yes,F,rome,9\nq2,,2.5,,M,oslo,2\n")
    tabular = get_modality("tabular")
    pre = p.info["preprocessing"]
    raw_new, names_new, _ = tabular.read_raw(pre, [new])
    x, names_in, _ = tabular.read_inputs(pre, [new])
    assert names_new == names_in == ["q1", "q2"] and raw_new[0, names.index("site")] == -1
    torch.testing.assert_close(plan.prepare(raw_new), x, atol=1e-6, rtol=1e-6)
    assert plan.prepare(raw_new)[0, -2] == 0  # the unknown site's code


# ------------------------------------------------------------------------------------ history


@pytest.fixture(scope="module")
def histories(tmp_path_factory) -> tuple[Path, Path]:
    """30 patients with 2-6 visits at irregular times (a lab value sometimes missing), and their
    baseline table (age, sex, survival time and event)."""
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("hist")
    history, baseline = ["id,time,crp,alb"], ["id,age,sex,time,event"]
    for p in range(30):
        times = np.sort(rng.choice(np.arange(12), size=rng.integers(2, 7), replace=False))
        for t in (times - times[0]).tolist():
            alb = "" if rng.random() < 0.2 else f"{rng.normal(p % 3, 1):.4f}"
            history.append(f"p{p},{t},{rng.normal(5, 2):.4f},{alb}")
        baseline.append(f"p{p},{40 + p},{'mf'[p % 2]},{3 + (p * 7) % 15},{p % 2}")
    (root / "h.csv").write_text("\n".join(history) + "\n")
    (root / "b.csv").write_text("\n".join(baseline) + "\n")
    return root / "h.csv", root / "b.csv"


def test_history_plan_takes_the_encoded_row(histories: tuple[Path, Path], tmp_path: Path) -> None:
    history, baseline = histories
    data = {"source": "csv", "path": str(history), "label_column": ["time", "event"],
            "history": {"baseline": str(baseline), "max_visits": 4},
            "split": {"method": "random", "val": 0.2, "test": 0.3, "seed": 0}}  # fmt: skip
    p = _prepared("history", data, tmp_path, model={"name": "history_gru", "args": {"width": 8}},
                  task={"kind": "survival"})  # fmt: skip
    plan, raw = _check_plan(p)
    assert plan.example["max_visits"] == 4 and len(plan.example["per_visit"]) == 2 * 2 + 3
    assert raw.shape[1] == len(plan.example["static"]) + 4 * 7
    hist = get_modality("history")
    pre = p.info["preprocessing"]
    raw_files, names, _ = hist.read_raw(pre, [history])
    x, names_in, _ = hist.read_inputs(pre, [history])
    assert names == names_in and len(names) == 30
    torch.testing.assert_close(plan.prepare(raw_files), x, atol=0, rtol=0)


# ------------------------------------------------------------------------------------ volume


@pytest.fixture(scope="module")
def adrenal(tmp_path_factory) -> Path:
    """30 training and 10 validation AdrenalMNIST3D volumes (28^3 uint8)."""
    with np.load(MEDMNIST / "adrenalmnist3d.npz") as a:
        arrays = {f"{s}_{k}": a[f"{s}_{k}"][:n] for s, n in (("train", 30), ("val", 10)) for k in ("images", "labels")}
    path = tmp_path_factory.mktemp("adrenal") / "adrenal.npz"
    np.savez_compressed(path, **arrays)
    return path


def test_volume_plan_normalises_inside(adrenal: Path, tmp_path: Path) -> None:
    import nibabel as nib

    data = {"source": "npz", "path": str(adrenal), "split": {"method": "predefined", "holdout": "val"},
            "volume": {"augment": {"flip": 0.5}}}  # fmt: skip
    p = _prepared("volume", data, tmp_path, model={"name": "small_cnn", "args": {"width": 4, "depth": 2}})
    plan, raw = _check_plan(p)
    assert 0 <= raw.min() and raw.max() <= 1 and plan.example["mean"] is not None
    # The graph also takes other sizes (resized inside): depth, height and width are dynamic.
    dims = {2: torch.export.Dim("d", min=8, max=256), 3: torch.export.Dim("h", min=8, max=256),
            4: torch.export.Dim("w", min=8, max=256)}  # fmt: skip
    exported = torch.export.export(plan.prepare, (raw[:2, :, :, :20],), dynamic_shapes=({0: torch.export.Dim("batch"), **dims},))
    assert exported.module()(raw[:2, :, :20, :24, :16]).shape == (2, 1, 28, 28, 28)
    # (b) a scan file (min-max scaled, resized from 32x30x26) and an npz, read then prepared.
    volume = get_modality("volume")
    pre = p.info["preprocessing"]
    scan = np.random.default_rng(0).normal(100, 30, (32, 30, 26)).astype(np.float32)
    nib.save(nib.Nifti1Image(scan, np.eye(4)), tmp_path / "scan.nii.gz")
    files = [tmp_path / "scan.nii.gz", adrenal]
    raw_files, names, _ = volume.read_raw(pre, files)
    x, names_in, _ = volume.read_inputs(pre, files)
    assert names == names_in and raw_files.shape == (41, 1, 28, 28, 28)
    torch.testing.assert_close(plan.prepare(raw_files), x, atol=1e-6, rtol=1e-6)


def test_volume_segmentation_plan_takes_windows_and_refuses_whole_scans() -> None:
    pre = {"modality": "volume", "spatial_dims": 3, "spacing": [1.5, 1.5, 2.0], "intensity": "ct",
           "ct_window": [-100, 240], "nonzero": False, "crop_foreground": True, "patch_size": [32, 32, 16],
           "nan_policy": "raise", "channels": 1, "limits": {}, "overlap": 0.5, "sw_batch_size": 4}  # fmt: skip
    volume = get_modality("volume")
    plan = volume.export_plan(pre)
    assert "sliding windows outside the graph" in plan.outside and plan.input.shape == ["batch", 1, 32, 32, 16]
    window = torch.rand(2, 1, 32, 32, 16)
    assert torch.equal(plan.prepare(window), window)
    with pytest.raises(ExportRefused, match="sliding windows") as err:
        volume.read_raw(pre, ["scan.nii.gz"])
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ molecule


@pytest.fixture(scope="module")
def ligands(tmp_path_factory) -> Path:
    """The first 60 ChEMBL2147 ligands (SMILES, pKi), as `biomx datasets` exports them."""
    pytest.importorskip("rdkit")
    from biomx.modalities.molecule.starter_data import export_molecules

    return export_molecules("chembl2147_ki", tmp_path_factory.mktemp("mol"), limit=60)


def _molecule_run(ligands: Path, tmp_path: Path, model: str, features: list[str]) -> Prepared:
    data = {"source": "csv", "path": str(ligands), "label_column": "pKi",
            "molecule": {"id_column": "id", "features": features, "morgan_size": 256, "morgan_counts": True, "cache": False},
            "split": {"method": "random", "val": 0.2, "test": 0.3}}  # fmt: skip
    return _prepared("molecule", data, tmp_path, model={"name": model}, task={"kind": "regression"})


@pytest.mark.parametrize("model", ["fingerprint_mlp", "svm"])
def test_molecule_plan_scales_descriptors_inside(ligands: Path, tmp_path: Path, model: str) -> None:
    features = ["morgan", "descriptors"] if model == "fingerprint_mlp" else ["morgan"]
    p = _molecule_run(ligands, tmp_path, model, features)
    plan, raw = _check_plan(p)
    settings = plan.example["featuriser"]
    assert settings["morgan"]["size"] == 256 and settings["morgan"]["counts"] and raw[:, :256].max() > 1
    if "descriptors" in features:
        names = settings["descriptors"]["names"]
        assert raw.shape[1] == 256 + len(names) and "MolWt" in names
        raw = raw.clone()
        raw[0, 256] = float("nan")  # a descriptor RDKit did not give: the training mean, i.e. 0
        assert plan.prepare(raw)[0, 256] == 0
    molecule = get_modality("molecule")
    pre = p.info["preprocessing"]
    queries = tmp_path / "q.csv"
    queries.write_text("smiles,id\nCCO,ethanol\nc1ccccc1O,phenol\nC1CC(,broken\nCC(=O)[O-].[Na+],acetate\n")
    raw_files, names, failures = molecule.read_raw(pre, [queries], skip_errors=True)
    data, names_in, _ = molecule.read_inputs(pre, [queries], skip_errors=True)
    assert names == names_in == ["ethanol", "phenol", "acetate"] and len(failures) == 1
    expected, _ = data.__getitems__([0, 1, 2])
    torch.testing.assert_close(plan.prepare(raw_files), expected.features, atol=1e-6, rtol=1e-6)


def test_molecule_graph_networks_are_refused_in_one_line(ligands: Path, tmp_path: Path) -> None:
    p = _molecule_run(ligands, tmp_path, "dmpnn", [])
    molecule = get_modality("molecule")
    for call in (lambda pre: molecule.export_plan(pre), lambda pre: molecule.raw_rows(pre, p.data, p.splits["test"])):
        with pytest.raises(ExportRefused, match="graph networks cannot be exported") as err:
            call(p.info["preprocessing"])
        assert "\n" not in str(err.value) and "fingerprint_mlp" in str(err.value)
