"""Per-atom attributions for models that read only molecule-level vectors, via fingerprint bits.

A vector model (fingerprint MLP, SVM, random forest, LightGBM: anything that maps a batch's
`features` to outputs) sees no atoms, only the Morgan fingerprint (the first `size` columns of
`features`) and possibly standardised RDKit descriptors after it. Its atom attributions are
built in two steps, in the style of Riniker & Landrum's similarity maps (J. Cheminform. 2013):

1. **Bit contributions by exact occlusion.** For each molecule, every Morgan bit that is on
   (count > 0 for count fingerprints) is set to 0 in a copy of its vector; the bit's
   contribution is f(vector) - f(vector with that bit 0), in the output the task's explanation
   hooks choose (`task.pick_explained` / `describe` / `attribution_text`, as for graph models:
   a logit for classification, the standardised target for regression). All copies of one
   molecule go through the model in one forward pass, in eval mode, without gradients.
2. **Bits to atoms.** RDKit's bit info (the same Morgan generator, radius, size and counts as
   `featurize.morgan_fingerprints`) lists the atom environments (centre atom, radius) that set
   each bit. The rule: a bit's contribution is split equally among the environments that set
   it, and each environment's share equally among its atoms (the centre plus every atom
   reached by the environment's bonds; radius 0 is the centre alone). An atom in several
   environments collects a share from each, so a molecule's atom scores add up to the sum of
   its bit contributions. For a model linear in the bits that sum is f(x) - f(x without any
   bit); for a nonlinear model the bits' interactions are not split out.

Descriptor columns are never occluded and get no atom weights: what they contribute is not
drawn (the section's text says so). A folded fingerprint can give unrelated environments the
same bit; they then share its contribution, which is the usual price of a small `size`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator
from torch import Tensor, nn
from torch_geometric.data import Data

from biomx.explain import eval_mode, output_column
from biomx.modalities.molecule.interpret import attribution_section
from biomx.modalities.molecule.standardize import mol_from_smiles
from biomx.protocols import Task

Environment = tuple[int, ...]  # the atoms of one atom environment, centre first


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights live (a solver-fitted model may hold buffers only; else CPU)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def environment_atoms(mol: Chem.Mol, centre: int, radius: int) -> Environment:
    """The atoms of the Morgan environment of `radius` bonds around atom `centre`, centre first."""
    atoms = [centre]
    if radius > 0:
        for bond in Chem.FindAtomEnvironmentOfRadiusN(mol, radius, centre):
            b = mol.GetBondWithIdx(bond)
            atoms += [b.GetBeginAtomIdx(), b.GetEndAtomIdx()]
    return tuple(dict.fromkeys(atoms))


def bit_environments(smiles: str, morgan: dict[str, Any]) -> dict[int, list[Environment]]:
    """Each on-bit of `smiles`'s Morgan fingerprint -> the atom environments that set it.

    `morgan` is the run's {"radius", "size", "counts"} (`pipeline.feature_settings`); the
    generator and molecule are those of `featurize.morgan_fingerprints`, so the atom indices are
    the order of `Chem.MolFromSmiles(smiles)` (what `draw_atom_attributions` draws). For counts,
    a bit's count is the number of its environments.
    """
    mol = mol_from_smiles(smiles)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=int(morgan["radius"]), fpSize=int(morgan["size"]))
    output = rdFingerprintGenerator.AdditionalOutput()
    output.AllocateBitInfoMap()
    if morgan.get("counts"):
        generator.GetCountFingerprintAsNumPy(mol, additionalOutput=output)
    else:
        generator.GetFingerprintAsNumPy(mol, additionalOutput=output)
    return {int(bit): [environment_atoms(mol, int(centre), int(radius)) for centre, radius in found]
            for bit, found in output.GetBitInfoMap().items()}  # fmt: skip


def atom_scores_from_bits(
    num_atoms: int, bit_scores: dict[int, float], environments: dict[int, list[Environment]]
) -> np.ndarray:
    """Per-atom scores: each bit's score split equally among its environments, then their atoms.

    A bit without an environment (not expected: the fingerprint and the bit info come from the
    same generator) adds nothing.
    """
    scores = np.zeros(num_atoms, dtype=np.float64)
    for bit, score in bit_scores.items():
        found = environments.get(bit, [])
        for atoms in found:
            share = score / len(found) / len(atoms)
            for atom in atoms:
                scores[atom] += share
    return scores


def occlusion(model: nn.Module, vector: Tensor, bits: np.ndarray, target: int) -> tuple[float, np.ndarray]:
    """(output, contributions): column `target` of the model for one molecule's `vector`, and for
    each index in `bits` the output minus the output with that column set to 0.

    The vector and its occluded copies are one batch (`features` and `num_molecules`, the
    molecule contract without a graph), evaluated once in eval mode without gradients.
    """
    copies = len(bits) + 1
    features = vector.reshape(1, -1).repeat(copies, 1)
    rows = torch.arange(1, copies, device=features.device)
    features[rows, torch.as_tensor(bits, dtype=torch.long, device=features.device)] = 0
    batch = Data(features=features)
    batch.num_molecules = copies
    with eval_mode(model), torch.no_grad():
        outputs = model(batch)
        outputs = outputs.unsqueeze(1) if outputs.dim() == 1 else outputs  # a one-output model
        column = output_column(outputs, target, copies, "molecules").double().cpu().numpy()
    return float(column[0]), column[0] - column[1:]


def bit_attributions(
    model: nn.Module, smiles: str, vector: Tensor, morgan: dict[str, Any], target: int = 0
) -> tuple[dict[int, float], np.ndarray, float]:
    """One molecule's (bit contributions, atom scores, explained output).

    Args:
        model: reads `batch.features` (the molecule's whole vector: fingerprint then descriptors).
        smiles: the molecule, as featurised (its canonical SMILES).
        vector: its (D,) feature vector, D >= morgan["size"], on the model's device.
        morgan: the run's {"radius", "size", "counts"}.
        target: the output column explained.

    Returns:
        {bit: contribution} for every on-bit, the per-atom scores (RDKit atom order) and the
        model's output for the unchanged vector.
    """
    size = int(morgan["size"])
    if vector.numel() < size:
        raise ValueError(f"a feature vector of {vector.numel()} columns has no {size}-bit fingerprint")
    bits = np.flatnonzero(vector.reshape(-1)[:size].detach().cpu().numpy())
    output, contributions = occlusion(model, vector.reshape(-1), bits, target)
    bit_scores = {int(b): float(c) for b, c in zip(bits, contributions, strict=True)}
    num_atoms = mol_from_smiles(smiles).GetNumAtoms()
    atoms = atom_scores_from_bits(num_atoms, bit_scores, bit_environments(smiles, morgan))
    return bit_scores, atoms, output


# ---------------------------------------------------------------------------------- report


def _section_text(task: Task, morgan: dict[str, Any], descriptors: bool) -> str:
    output, shown = task.attribution_text()
    kind = "counts" if morgan.get("counts") else "bits"
    text = (f"Fingerprint occlusion: each Morgan bit that is on (radius {morgan['radius']}, "
            f"{morgan['size']} {kind}) is set to 0, and the drop in {output} is that bit's "
            "contribution. A bit's contribution is shared equally among the atom environments that "
            "set it, and within an environment equally among its atoms (similarity maps, Riniker & "
            "Landrum 2013), so a molecule's atom scores add up to the sum of its bit contributions. "
            "Red atoms raise the prediction, blue atoms lower it; colours are scaled to each "
            f"molecule's largest score. Shown: {shown}.")  # fmt: skip
    if descriptors:
        text += " Descriptor contributions are not drawn: descriptors belong to no atom."
    return text


def _scores(model: nn.Module, smiles: str, features: Tensor, morgan: dict[str, Any],
            column: int) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """One molecule's atom scores and its further JSON fields (the output, the bits by size)."""
    bit_scores, atoms, output = bit_attributions(model, smiles, features, morgan, column)
    ranked = sorted(bit_scores.items(), key=lambda item: -abs(item[1]))
    return atoms, {"output": float(f"{output:.6g}"),
                   "bit_scores": {str(bit): float(f"{score:.6g}") for bit, score in ranked}}  # fmt: skip


def bit_explanations(
    model: nn.Module,
    smiles: list[str],
    features: Tensor,
    predictions: np.ndarray,
    targets: np.ndarray,
    task: Task,
    n: int,
    morgan: dict[str, Any],
) -> dict | None:
    """A report section with fingerprint-bit atom attributions for up to n test molecules.

    The same molecules, outputs, captions and look as `interpret.molecule_explanations` (the
    task's `pick_explained`, `describe`, `attribution_text`; `draw_atom_attributions`), with
    the title "Atom attributions".

    Args:
        model: a vector model reading `batch.features`.
        smiles: the test molecules' canonical SMILES, in `features` order.
        features: (N, D) their vectors (Morgan columns first), on the model's device.
        predictions: the task's predictions, (N,) or (N, K).
        targets: (N,) or (N, K) labels; NaN = missing.
        task: the run's task.
        n: how many molecules to show at most.
        morgan: the run's {"radius", "size", "counts"}.

    Returns:
        `{"title", "text", "figures": [PNG bytes], "json": {smiles: {...}}}`, or None when n <= 0
        or there is no molecule.

    Raises:
        ValueError: the smiles, features, predictions and targets disagree on the molecule count.
    """
    if n <= 0 or not smiles:
        return None
    preds, labels = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if len({len(smiles), int(features.shape[0]), len(preds), len(labels)}) != 1:
        raise ValueError(f"bit_explanations: {len(smiles)} SMILES, {features.shape[0]} vectors, "
                         f"{len(preds)} predictions, {len(labels)} targets")  # fmt: skip
    picks = task.pick_explained(preds, labels, n)
    descriptors = int(features.shape[1]) > int(morgan["size"])
    return attribution_section(task, smiles, preds, labels, picks,
                               lambda row, column: _scores(model, smiles[row], features[row], morgan, column),
                               _section_text(task, morgan, descriptors))  # fmt: skip


def vector_explanations(model: nn.Module, smiles: list[str], batch: Data, predictions: np.ndarray,
                        targets: np.ndarray, task: Task, n: int, morgan: dict[str, Any] | None) -> dict | None:  # fmt: skip
    """`bit_explanations` for a molecule batch without graphs; None without a fingerprint."""
    features = getattr(batch, "features", None)
    if morgan is None or features is None:
        return None
    return bit_explanations(model, smiles, features.to(_device(model)), predictions, targets, task, n, morgan)
