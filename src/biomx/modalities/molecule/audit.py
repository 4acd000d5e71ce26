"""What the data audit asks of molecules (`protocols.AuditsData`): the standard InChIKey for
identical molecules (however they were written), 2048-bit Morgan fingerprints (radius 2) for
near-identical ones (Tanimoto >= NEAR_TANIMOTO: stereoisomers, which share their bits, and close
analogues), and heavy atoms and molecular weight for outliers."""

from __future__ import annotations

import numpy as np

from biomx.data.samples import Samples
from biomx.data_audit.fingerprints import Fingerprints, NearVectors

NEAR_TANIMOTO = 0.95
RADIUS, BITS = 2, 2048


def _mols(samples: Samples) -> list | None:
    from rdkit import Chem, RDLogger

    smiles = getattr(samples.inputs, "smiles", None)
    if smiles is None or len(smiles) != len(samples.ids):
        return None
    RDLogger.DisableLog("rdApp.*")  # InChI warnings for unusual valences: one per molecule otherwise
    return [Chem.MolFromSmiles(s) for s in smiles]


def inchikeys(smiles: list[str]) -> list[str | None]:
    """The standard InChIKey of each molecule (None where RDKit cannot make one)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    keys = []
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        key = Chem.MolToInchiKey(mol) if mol is not None else ""
        keys.append(key or None)
    return keys


def fingerprints(samples: Samples) -> Fingerprints | None:
    from rdkit.Chem import rdFingerprintGenerator

    mols = _mols(samples)
    if mols is None:
        return None
    exact = inchikeys(samples.inputs.smiles)
    # a molecule without an InChIKey is compared by its canonical form instead
    exact = [k if k is not None else f"canonical:{s}" for k, s in zip(exact, samples.inputs.smiles, strict=True)]
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=RADIUS, fpSize=BITS)
    bits = np.zeros((len(mols), BITS), dtype=np.uint8)
    for i, mol in enumerate(mols):
        if mol is not None:
            bits[i] = generator.GetFingerprintAsNumPy(mol)
    near = NearVectors(bits, "tanimoto", NEAR_TANIMOTO, f"Morgan fingerprint (radius {RADIUS}, {BITS} bits), "
                       f"Tanimoto >= {NEAR_TANIMOTO}")  # fmt: skip
    return Fingerprints(exact, "InChIKey", near)


def describe_sizes(samples: Samples) -> dict[str, np.ndarray] | None:
    from rdkit.Chem import Descriptors

    mols = _mols(samples)
    if mols is None:
        return None
    atoms = np.array([m.GetNumHeavyAtoms() if m is not None else np.nan for m in mols], dtype=np.float64)
    weight = np.array([Descriptors.MolWt(m) if m is not None else np.nan for m in mols], dtype=np.float64)
    return {"heavy atoms": atoms, "molecular weight": weight}
