"""Standardising molecules: parse, clean and canonicalise SMILES with RDKit.

`standardize` keeps the largest fragment, neutralises and canonicalises, and lists invalid
molecules (where, reason) instead of raising. `mol_from_smiles` parses its output again for
the featurisers and splits.
"""

from __future__ import annotations

from collections.abc import Sequence

from rdkit import Chem
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.rdBase import BlockLogs


def _parse_error(smiles: str) -> str:
    """Why RDKit rejects `smiles`: a parse error, or the sanitisation message."""
    mol = Chem.MolFromSmiles(smiles, sanitize=False)
    if mol is None:
        return f"cannot parse SMILES {smiles!r}"
    try:
        Chem.SanitizeMol(mol)
    except Exception as e:  # noqa: BLE001 - AtomValenceException, KekulizeException, ...
        return f"invalid molecule {smiles!r}: {' '.join(str(e).split())}"
    return f"cannot read SMILES {smiles!r}"


def standardize(smiles_list: Sequence[str], where: Sequence[str],
                standardize: bool = True,
                max_atoms: int | None = None) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """Parse, clean and canonicalise molecules; invalid ones are collected, never raised.

    With `standardize`, a salt or solvent is stripped (largest fragment) and charges
    neutralised where a neutral form exists, so "CC(=O)[O-].[Na+]" becomes "CC(=O)O" and the
    same compound measured as different salts is one molecule. Without it, SMILES are only
    canonicalised. A molecule with more than `max_atoms` atoms (as parsed) is invalid: the
    featurisers would stall on it.

    Returns:
        (canonical SMILES of the valid molecules, their indices in the input,
         [(where, reason)] for the invalid ones)
    """
    chooser, uncharger = rdMolStandardize.LargestFragmentChooser(), rdMolStandardize.Uncharger()
    canonical, kept, invalid = [], [], []
    with BlockLogs():
        for i, smiles in enumerate(smiles_list):
            smiles = (smiles or "").strip()
            if not smiles:
                invalid.append((where[i], "no molecule (empty SMILES, or an SDF block RDKit "
                                          "cannot read)"))
                continue
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                invalid.append((where[i], _parse_error(smiles)))
                continue
            if max_atoms is not None and mol.GetNumAtoms() > max_atoms:
                invalid.append((where[i], f"{mol.GetNumAtoms()} atoms > data.molecule.max_atoms ({max_atoms})"))
                continue
            try:
                if standardize:
                    mol = uncharger.uncharge(chooser.choose(mol))
                if mol.GetNumHeavyAtoms() == 0:
                    invalid.append((where[i], f"no heavy atoms in {smiles!r}"))
                    continue
                canonical.append(Chem.MolToSmiles(mol))
            except Exception as e:  # noqa: BLE001 - an RDKit failure on one molecule
                message = " ".join(str(e).split())
                invalid.append((where[i], f"cannot standardise {smiles!r}: {message}"))
                continue
            kept.append(i)
    return canonical, kept, invalid


def mol_from_smiles(smiles: str) -> Chem.Mol:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        raise ValueError(f"invalid SMILES {smiles!r}: featurise only the output of standardize()")
    return mol
