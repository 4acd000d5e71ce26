"""The data audit (`biomx audit-data`, RUN/data_audit.json): planted duplicates, near duplicates,
conflicting labels and shared patients are found in small real data; a different image is not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biomx.cli import main
from biomx.data_audit.fingerprints import NearVectors
from biomx.data_audit.near import near_pairs
from biomx.data_audit.run import audit_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _check(audit: dict, name: str) -> dict:
    return next(c for c in audit["checks"] if c["name"] == name)


def _altered(image: np.ndarray) -> np.ndarray:
    """The same X-ray with its contrast lowered and light noise added (uint8)."""
    noise = np.random.default_rng(1).normal(0, 2.5, image.shape)
    return np.clip(0.85 * image.astype(np.float64) + 20 + noise, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def planted_npz(tmp_path_factory, xrays) -> Path:
    """100 train, 20 val, 20 test real X-rays; test[0] is train[5] exactly, test[1] is train[7]
    with its contrast changed and noise added, train[11] is train[10] with the other label."""
    images, labels = xrays[0][:, 0].numpy(), xrays[1].numpy().astype(np.int64)
    train_x, train_y = images[:100].copy(), labels[:100].copy()
    train_x[11], train_y[11] = train_x[10], 1 - train_y[10]
    test_x, test_y = images[120:140].copy(), labels[120:140].copy()
    test_x[0], test_y[0] = train_x[5], train_y[5]
    test_x[1], test_y[1] = _altered(train_x[7]), train_y[7]
    path = tmp_path_factory.mktemp("audit") / "planted.npz"
    np.savez(path, train_images=train_x, train_labels=train_y[:, None], val_images=images[100:120],
             val_labels=labels[100:120, None], test_images=test_x, test_labels=test_y[:, None])
    return path


def _image_config(tmp_path: Path, npz: Path, extra: str = "") -> Path:
    cfg = tmp_path / "audit.yaml"
    cfg.write_text(f"name: planted\ndata: {{source: npz, path: {npz}, split: {{method: predefined}}{extra}}}\n"
                   f"model: {{name: small_cnn}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")  # fmt: skip
    return cfg


def test_planted_image_duplicates_are_found(tmp_path, planted_npz) -> None:
    from biomx.config import load_config

    audit = audit_config(load_config(_image_config(tmp_path, planted_npz)))
    exact = _check(audit, "exact duplicates")
    assert exact["status"] == "problem"
    # samples are numbered train (1-100), val (101-120), test (121-140): test[0] is sample 121
    assert exact["details"]["pairs"]["test/train"] == [[121, 6]]
    assert exact["details"]["within_copies"]["train"] == 1  # train[11] copies train[10]
    near = _check(audit, "near duplicates")
    assert near["status"] == "warning"
    assert near["details"]["pairs"]["test/train"] == 1  # only the altered copy of train[7]
    assert sorted(near["details"]["samples"]["test/train"]) == [8, 122]
    assert near["details"]["pairs"]["val/train"] == 0 and near["details"]["pairs"]["test/val"] == 0
    conflicts = _check(audit, "conflicting labels")
    assert conflicts["status"] == "warning" and conflicts["details"]["samples"] == [11, 12]
    assert _check(audit, "patient overlap")["status"] == "not checked"
    assert _check(audit, "label balance")["status"] in ("ok", "warning")


def test_near_duplicate_hash_separates_an_altered_copy_from_other_xrays(xrays) -> None:
    from biomx.data.samples import Samples
    from biomx.modalities.image.audit import fingerprints

    images = xrays[0][:200].clone()
    images[199] = torch.from_numpy(_altered(images[3, 0].numpy()))[None]
    fp = fingerprints(Samples(images, ["x"] * 200, [str(i) for i in range(200)]))
    found = near_pairs(fp.near, np.arange(200), exclude=fp.exact)
    assert found.pairs.tolist() == [[3, 199]]  # the altered copy, and no other X-ray


def test_near_pairs_metrics() -> None:
    bits = np.array([[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 1]], dtype=np.uint8)
    rows = np.arange(3)
    assert near_pairs(NearVectors(bits, "hamming", 1, ""), rows).pairs.tolist() == [[0, 1]]
    assert near_pairs(NearVectors(bits, "tanimoto", 0.6, ""), rows).pairs.tolist() == [[0, 1]]
    assert near_pairs(NearVectors(bits, "tanimoto", 0.7, ""), rows).count == 0
    signatures = np.array([[1, 2, 3, 4], [1, 2, 3, 9], [5, 6, 7, 8]])
    across = near_pairs(NearVectors(signatures, "minhash", 0.75, ""), rows[2:], rows[:2])
    assert across.count == 0
    assert near_pairs(NearVectors(signatures, "minhash", 0.75, ""), rows).pairs.tolist() == [[0, 1]]


def test_one_molecule_written_two_ways_is_found(tmp_path) -> None:
    pytest.importorskip("rdkit")
    from biomx.config import load_config
    from biomx.modalities.molecule.audit import inchikeys

    assert inchikeys(["OCC", "C(O)C"])[0] == inchikeys(["OCC", "C(O)C"])[1] == "LFQSCWFLJHTTHZ-UHFFFAOYSA-N"
    rows = [("m1", "OCC", 1.0, "train"), ("m2", "c1ccccc1O", 2.0, "train"), ("m3", "CCN", 3.0, "train"),
            ("m4", "CCCCCC", 4.0, "train"), ("m5", "C(O)C", 1.5, "test"), ("m6", "CC(=O)O", 0.5, "test")]
    table = tmp_path / "mols.csv"
    table.write_text("id,smiles,y,split\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows))
    cfg = tmp_path / "mols.yaml"
    cfg.write_text(f"name: mols\ndata: {{modality: molecule, source: csv, path: {table}, label_column: y, "
                   "split: {method: predefined, column: split, val: 0}}\nmodel: {name: fingerprint_mlp}\n"
                   "task: {kind: regression}\n")  # fmt: skip
    audit = audit_config(load_config(cfg))
    exact = _check(audit, "exact duplicates")
    assert exact["status"] == "problem" and exact["details"]["method"] == "InChIKey"
    assert exact["details"]["pairs"]["test/train"] == [[5, 1]]
    assert _check(audit, "target distribution")["status"] in ("ok", "warning")


def _table(tmp_path: Path) -> Path:
    """12 patients' rows: p1 in train and test, a train row repeated with the other label."""
    lines = ["id,patient_id,age,marker,label,split"]
    for i in range(12):
        split = "test" if i >= 9 else "train"
        age = "" if i == 4 else str(40 + 3 * i)
        lines.append(f"r{i},p{i},{age},{(i * 7) % 5 + 0.5},{'yes' if i % 2 else 'no'},{split}")
    lines.append("r12,p1,43,2.5,no,train")  # r1's features (p1) again, with the other label
    lines.append("r13,p1,90,1.5,yes,test")  # p1 again, now in test
    path = tmp_path / "table.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "table.yaml"
    cfg.write_text(f"name: table\ndata: {{modality: tabular, source: csv, path: {path}, label_column: label, "
                   "tabular: {id_column: id}, split: {method: predefined, column: split, val: 0}}\n"
                   f"model: {{name: tabular_mlp}}\ntask: {{kind: classification}}\noutput: {{dir: {tmp_path}}}\n")  # fmt: skip
    return cfg


def test_table_patient_overlap_conflicts_and_missing_values(tmp_path) -> None:
    from biomx.config import load_config

    audit = audit_config(load_config(_table(tmp_path)))
    overlap = _check(audit, "patient overlap")
    assert overlap["status"] == "problem" and overlap["details"]["leaked_patients"] == 1
    conflicts = _check(audit, "conflicting labels")
    assert conflicts["status"] == "warning" and conflicts["details"]["samples"] == [2, 13]
    assert _check(audit, "missing values")["details"]["counts"] == {"age": 1}
    assert _check(audit, "near duplicates")["status"] == "not checked"
    text = json.dumps(audit)
    assert '"p1"' not in text and "r12" not in text  # no patient or sample ids in the audit


def test_cli_prints_verdicts_strict_fails_and_a_typo_is_one_line(tmp_path, capsys) -> None:
    cfg = _table(tmp_path)
    out = tmp_path / "audit.json"
    assert main(["audit-data", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("label balance: ")
    assert any(line.startswith("patient overlap: problem: 1 of ") for line in printed)
    assert printed[-1].startswith("data audit: ") and str(out) in printed[-1]
    assert json.loads(out.read_text())["summary"]["problem"] >= 1
    assert main(["audit-data", str(cfg), "--out", str(out), "--strict"]) == 1
    assert "--strict" in capsys.readouterr().err
    assert main(["audit-data", str(cfg), "--set", "data.pathh=x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pathh" in err[0]


def test_a_training_run_writes_its_audit_and_report_section(tmp_path, png_folder) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: audited\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
                   "model: {name: small_cnn, args: {width: 8, depth: 2}}\n"
                   "train: {epochs: 1, batch_size: 32, progress: false}\neval: {bootstrap: 0, explain: 0}\n"
                   f"output: {{dir: {tmp_path}, name: audited, tensorboard: false}}\n")  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    audit = json.loads((tmp_path / "audited" / "data_audit.json").read_text())
    assert [c["name"] for c in audit["checks"]][:2] == ["label balance", "target distribution"]
    assert _check(audit, "near duplicates")["status"] != "not checked"
    report = (tmp_path / "audited" / "report.html").read_text()
    assert "Data audit" in report and "exact duplicates" in report


def test_a_modality_without_the_audit_members_is_not_checked_not_a_crash(xrays) -> None:
    from types import SimpleNamespace

    from biomx.data.samples import Samples
    from biomx.data_audit.audit import audit_samples

    images, labels = xrays[0][:40], xrays[1][:40]
    samples = Samples(images, [str(int(v)) for v in labels], [str(i) for i in range(40)])
    splits = {"train": np.arange(30), "val": np.arange(30, 35), "test": np.arange(35, 40)}
    bare = SimpleNamespace(name="bare")  # a plug-in written before the audit

    def broken(samples: Samples) -> None:
        raise ValueError("cannot hash these")

    for modality, why in ((bare, "the modality gives no fingerprints"), (SimpleNamespace(name="b", fingerprints=broken),
                                                                           "fingerprints failed: cannot hash these")):  # fmt: skip
        audit = audit_samples(modality, samples, labels.long(), labels.long().numpy(), splits, ["normal", "pneumonia"])
        exact = _check(audit, "exact duplicates")
        assert exact["status"] == "not checked" and why in exact["message"]
        assert _check(audit, "outliers")["status"] == "not checked"
        assert _check(audit, "label balance")["status"] in ("ok", "warning")
        assert "normal" in _check(audit, "label balance")["message"]


def test_segmentation_cases_are_hashed_from_the_case_cache(tmp_path) -> None:
    """A paired source's cases stay in the case cache: a planted copy of one case is found there."""
    from biomx.config import load_config
    from biomx.modalities.image.starter_data import export_dataset

    root = tmp_path / "nuclei"
    export_dataset("nuclei2d", root, format=None, limit=None)
    for folder in ("imagesTr", "labelsTr"):
        (root / folder / "copy.tif").write_bytes((root / folder / "nuclei_r0_c0.tif").read_bytes())
    listing = json.loads((root / "dataset.json").read_text())
    listing["training"].append({"image": "./imagesTr/copy.tif", "label": "./labelsTr/copy.tif"})
    listing["numTraining"] += 1
    (root / "dataset.json").write_text(json.dumps(listing))
    cfg = load_config(Path(__file__).parents[1] / "examples" / "nuclei2d_unet.yaml", [f"data.path={root}"])
    audit = audit_config(cfg)
    exact = _check(audit, "exact duplicates")
    assert exact["status"] in ("warning", "problem")
    assert sum(exact["details"]["within_copies"].values()) + sum(exact["details"]["across_counts"].values()) == 1
    assert _check(audit, "outliers")["details"]["measures"][:2] == ["axis 1 size", "axis 2 size"]
    assert _check(audit, "conflicting labels")["status"] == "not checked"  # case numbers are not labels
