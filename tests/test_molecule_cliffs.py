"""Activity cliffs (MoleculeACE's definition): hand-made pairs, the exact edit distance, agreement
with MoleculeACE's published cliff labels, and the report section of a molecule regression run."""

from __future__ import annotations

import importlib.util
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
