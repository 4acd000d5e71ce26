"""Per-atom attributions for molecular property models, drawn on the 2D structure.

Integrated gradients (IG) of one model output with respect to the atom feature matrix `x`,
from an all-zero baseline, summed over the feature dimension: one score per atom, in the
units of the model's raw output (a logit for classification, the standardised target for
regression). The scores of a molecule add up to f(x) - f(0) (IG's completeness), so an atom's
score is its share of the prediction relative to a molecule whose atoms carry no features
(bonds and molecule-level vectors are kept as they are).

Why not Captum's `IntegratedGradients`: it scales inputs and concatenates the copies along
dim 0, which for node features would break `batch` and `edge_index`. Instead the graph batch
is replicated once per integration step, with offset atom indices, so one forward/backward
pass evaluates many steps; molecules are independent in eval mode, so the gradient of the
summed outputs is each copy's own gradient. The copies are concatenated molecule by molecule
and every molecule holds an even number of edges, so the reverse of edge e stays `e ^ 1`
(D-MPNN relies on it).

Models that read only molecule-level `features` (the fingerprint MLP) have no atoms to
attribute to: `atom_attributions` returns None and `molecule_explanations` no section.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem.Draw import rdMolDraw2D
from torch import Tensor, nn
from torch_geometric.data import Data

from biomx.explain import eval_mode, output_column
from biomx.protocols import Task

ATOMS_PER_PASS = 100_000  # replicated atoms per forward pass: bounds memory on big batches
# RDKit's 2D depiction grows faster than the atom count (a 150-atom peptide draws in about 0.2 s,
# 600 atoms in 3 s, the 1000 that data.molecule.max_atoms allows in many more): the report
# draws molecules up to this size and lists the others' scores only.
MAX_DRAWN_ATOMS = 150


def _replicate(batch: Data, x: Tensor, copies: int) -> Data:
    """`copies` stacked copies of a graph batch, with `x` (copies * atoms rows) as atom features.

    Copy c holds molecules c*B .. c*B + B - 1 and atoms offset by c * atoms, so the result is
    again a batch whose edges run molecule by molecule. Only the contract's keys are carried.
    """
    atoms, molecules = batch.x.shape[0], int(batch.num_molecules)
    device = batch.x.device
    copy = torch.arange(copies, device=device)
    edge_index = batch.edge_index.unsqueeze(1) + (copy * atoms).view(1, -1, 1)
    out = Data(
        x=x,
        edge_index=edge_index.reshape(2, -1),
        batch=(batch.batch.unsqueeze(0) + (copy * molecules).view(-1, 1)).reshape(-1),
    )
    out.num_molecules = copies * molecules
    if getattr(batch, "edge_attr", None) is not None:
        out.edge_attr = batch.edge_attr.repeat(copies, 1)
    if getattr(batch, "features", None) is not None:
        out.features = batch.features.repeat(copies, 1)
    return out


def atom_attributions(
    model: nn.Module, batch: Data, target: int = 0, steps: int = 32
) -> list[np.ndarray] | None:
    """Integrated gradients of output column `target` per atom, one array per molecule.

    The path integral from the all-zero atom features to `batch.x` uses Gauss-Legendre
    quadrature with `steps` nodes (as Captum does by default); each atom's score is summed
    over its features. The model runs in eval mode (training flags restored afterwards), with
    gradients enabled even inside a caller's `torch.no_grad()`; gradients are taken with
    `torch.autograd.grad` with respect to the atom features only, so no parameter's `.grad`
    changes, and `batch` is not modified.

    Args:
        model: maps a graph batch (the molecule contract: x, edge_index, edge_attr, batch,
            num_molecules, optional features) to (num_molecules, K) outputs.
        batch: the molecules to explain, on the model's device.
        target: the output column explained (0 for a single-logit binary model).
        steps: quadrature nodes; more gives a smaller completeness error.

    Returns:
        A list of `num_molecules` float64 arrays, molecule i's scores in its atom order, or
        None when the batch has no atom features (a fingerprint-only model).

    Raises:
        BiomxError: the model output is not (num_molecules, K) or `target` is out of range.
        ValueError: `steps` < 1.
    """
    if getattr(batch, "x", None) is None:
        return None
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = batch.x.detach()
    atoms, molecules = x.shape[0], int(batch.num_molecules)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1.0) / 2.0, dtype=x.dtype, device=x.device)
    weights = torch.tensor(weights / 2.0, dtype=torch.float32, device=x.device)
    per_pass = max(1, min(steps, ATOMS_PER_PASS // max(atoms, 1)))
    path_gradient = torch.zeros_like(x, dtype=torch.float32)
    with eval_mode(model), torch.enable_grad():
        for lo in range(0, steps, per_pass):
            alpha, weight = alphas[lo:lo + per_pass], weights[lo:lo + per_pass]
            k = len(alpha)
            scaled = (alpha.view(-1, 1, 1) * x.unsqueeze(0)).reshape(k * atoms, -1)
            scaled.requires_grad_(True)
            outputs = model(_replicate(batch, scaled, k))
            outputs = outputs.unsqueeze(1) if outputs.dim() == 1 else outputs  # a one-output model
            column = output_column(outputs, target, k * molecules, "molecules")
            # Row r of the output is copy r // molecules, i.e. quadrature node lo + r // molecules.
            objective = (column * weight.repeat_interleave(molecules)).sum()
            (gradient,) = torch.autograd.grad(objective, scaled, allow_unused=True)
            if gradient is not None:  # None: the model never reads x
                path_gradient += gradient.detach().float().reshape(k, atoms, -1).sum(dim=0)
    scores = (x.float() * path_gradient).sum(dim=1).double().cpu()
    owner = batch.batch.detach().cpu()
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=molecules).tolist()
    return [part.numpy() for part in torch.split(scores[order], counts)]


def draw_atom_attributions(
    smiles: str, scores: np.ndarray, title: str, size: tuple[int, int] = (360, 300)
) -> bytes:
    """A PNG of the molecule with each atom circled in red (raises the output) or blue (lowers it).

    Colours are on a diverging scale normalised by the molecule's largest |score|, so the
    picture shows where the model looks, not how much; white is no contribution.

    Args:
        smiles: the molecule; `scores` follow the atom order of `Chem.MolFromSmiles(smiles)`
            (heavy atoms, hydrogens implicit), which is the featuriser's order.
        scores: one score per atom.
        title: the legend under the drawing.
        size: width and height in pixels.

    Returns:
        PNG bytes.

    Raises:
        ValueError: the SMILES does not parse or the number of scores is not the atom count.
    """
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot draw attributions: RDKit cannot parse SMILES {smiles!r}")
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64).reshape(-1))
    if len(scores) != mol.GetNumAtoms():
        raise ValueError(f"got {len(scores)} atom scores for {smiles!r}, which has "
                         f"{mol.GetNumAtoms()} atoms (RDKit order, hydrogens implicit)")
    scale = float(np.abs(scores).max()) if len(scores) else 0.0
    scale = scale if scale > 0 else 1.0
    colormap = matplotlib.colormaps["bwr"]
    colours = {i: tuple(float(c) for c in colormap(0.5 + 0.5 * s / scale)[:3])
               for i, s in enumerate(scores)}  # fmt: skip
    drawer = rdMolDraw2D.MolDraw2DCairo(*size)
    rdMolDraw2D.PrepareAndDrawMolecule(
        drawer, mol, legend=title, highlightAtoms=list(range(len(scores))), highlightBonds=[],
        highlightAtomColors=colours, highlightAtomRadii=dict.fromkeys(range(len(scores)), 0.4),
    )
    drawer.FinishDrawing()
    return drawer.GetDrawingText()


# ---------------------------------------------------------------------------------- report


def _subset(batch: Data, rows: list[int]) -> Data:
    """The molecules `rows` (ascending) of a graph batch, renumbered 0..len(rows)-1."""
    device = batch.x.device
    keep = torch.zeros(int(batch.num_molecules), dtype=torch.bool, device=device)
    keep[torch.as_tensor(rows, device=device)] = True
    atom_mask = keep[batch.batch]
    new_index = torch.cumsum(atom_mask.long(), dim=0) - 1  # old atom -> new atom (where kept)
    edge_mask = atom_mask[batch.edge_index[0]]
    new_molecule = torch.cumsum(keep.long(), dim=0) - 1
    out = Data(x=batch.x[atom_mask], edge_index=new_index[batch.edge_index[:, edge_mask]],
               batch=new_molecule[batch.batch[atom_mask]])  # fmt: skip
    out.num_molecules = len(rows)
    if getattr(batch, "edge_attr", None) is not None:
        out.edge_attr = batch.edge_attr[edge_mask]
    if getattr(batch, "features", None) is not None:
        out.features = batch.features[keep]
    return out


def molecule_explanations(
    model: nn.Module,
    smiles: list[str],
    batch: Data,
    predictions: np.ndarray,
    targets: np.ndarray,
    task: Task,
    n: int,
    *,
    steps: int = 32,
) -> dict | None:
    """A report section with atom attributions for up to n test molecules.

    The task chooses the molecules: regression the best and the worst predicted (absolute error
    of target 0), classification the most confident correct positives and the worst mistakes.
    Only molecules and model outputs are reported, never sample ids.

    Args:
        model: a graph model following the molecule contract.
        smiles: the canonical SMILES of the batch's molecules, in batch order.
        batch: all those molecules as one graph batch, on the model's device.
        predictions: the task's predictions, (N,) or (N, K) (regression in original units,
            classification probabilities).
        targets: (N,) or (N, K) labels; NaN = missing.
        task: the run's task: it picks the molecules and the explained output, and words the
            captions (`pick_explained`, `describe`, `attribution_text`).
        n: how many molecules to show at most.
        steps: integrated-gradient quadrature nodes.

    Returns:
        `{"title", "text", "figures": [PNG bytes], "json": {smiles: {...}}}` (molecules over
        `MAX_DRAWN_ATOMS` atoms are in the JSON, not drawn, and the text counts them), or None when
        n <= 0, there is no molecule, or the batch has no atom features.

    Raises:
        ValueError: the smiles, batch, predictions and targets disagree on the molecule count.
    """
    if n <= 0 or not smiles or getattr(batch, "x", None) is None:
        return None
    preds = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(targets, dtype=np.float64)
    sizes = {len(smiles), int(batch.num_molecules), len(preds), len(labels)}
    if len(sizes) != 1:
        raise ValueError(f"molecule_explanations: {len(smiles)} SMILES, {batch.num_molecules} "
                         f"molecules in the batch, {len(preds)} predictions, "
                         f"{len(labels)} targets")  # fmt: skip
    picks = task.pick_explained(preds, labels, n)
    rows = sorted(row for row, _, _ in picks)
    columns = sorted({column for _, _, column in picks})
    sub = _subset(batch, rows)
    scores = {column: atom_attributions(model, sub, column, steps) for column in columns}
    output, shown = task.attribution_text()
    text = (f"Integrated gradients ({steps} steps, all-zero atom features as the baseline) of "
            f"{output} with respect to each atom's features, summed per atom; a molecule's "
            "scores add up to its output minus the baseline's. Red atoms raise the prediction, "
            "blue atoms lower it; colours are scaled to each molecule's largest score. "
            f"Shown: {shown}.")
    return attribution_section(task, smiles, preds, labels, picks,
                               lambda row, column: (scores[column][rows.index(row)], {}), text)  # fmt: skip


def attribution_section(task: Task, smiles: list[str], preds: np.ndarray, labels: np.ndarray,
                        picks: list[tuple[int, str, int]],
                        attributions: Callable[[int, int], tuple[np.ndarray, dict[str, Any]]], text: str) -> dict:  # fmt: skip
    """The "Atom attributions" section every method shares: for each picked (row, group, column),
    `attributions(row, column)` gives the atom scores and any further JSON fields; the task words
    the caption. A molecule over `MAX_DRAWN_ATOMS` atoms is in the JSON only, and `text` (how the
    scores were made) says how many."""
    figures, entries, undrawn = [], {}, 0
    for row, group, column in picks:
        atom_scores, extra = attributions(row, column)
        caption, value, truth, explained = task.describe(column, preds[row], labels[row])
        if len(atom_scores) > MAX_DRAWN_ATOMS:
            undrawn += 1
        else:
            figures.append(draw_atom_attributions(smiles[row], atom_scores, caption))
        entries[smiles[row]] = {
            "prediction": value if math.isfinite(value) else None, "target": truth, "group": group,
            "explained": str(explained), "atom_scores": [float(f"{s:.6g}") for s in atom_scores], **extra,
        }  # fmt: skip
    if undrawn:
        text += (f" {undrawn} of the {len(picks)} molecules have more than {MAX_DRAWN_ATOMS} atoms and "
                 "are not drawn (drawing time grows faster than the atom count); their atom scores "
                 "are in the JSON.")
    return {"title": "Atom attributions", "text": text, "figures": figures, "json": entries}
