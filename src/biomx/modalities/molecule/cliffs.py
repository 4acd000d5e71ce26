"""Activity cliffs as MoleculeACE defines them (van Tilborg, Alenicheva & Grisoni, JCIM 2022).

Two molecules are *highly similar* when at least one of these is >= 0.9 (MoleculeACE's
`moleculeace_similarity`, read from MoleculeACE 3.0.0's `benchmark/cliffs.py`):

- Tanimoto similarity of ECFP4 bit vectors (Morgan radius 2, 1024 bits: the size MoleculeACE's
  `get_tanimoto_matrix` uses by default, not 2048);
- Tanimoto similarity of the same fingerprint of the generic *graph framework*:
  `MakeScaffoldGeneric` applied to the whole molecule (every heavy atom carbon, every bond single,
  side chains kept), falling back to the Bemis-Murcko scaffold if that fails;
- normalised Levenshtein similarity of the SMILES strings, 1 - distance / max(length).

A pair is a *cliff* when it is highly similar and its potencies differ more than tenfold
(`max / min > 10` on potencies, i.e. more than 1 log unit). A *cliff compound* is in at least one
cliff pair anywhere in the data set: MoleculeACE flags compounds on the whole set (train and test
together) before splitting, and `calc_cliff_rmse` recomputes them on train + test.

Speed: Tanimoto rows use RDKit's BulkTanimotoSimilarity; the Levenshtein distance, the slow part
of MoleculeACE's O(N^2) Python loop, is computed exactly only for pairs that can still matter
(potencies more than tenfold apart, not already cliffs, lengths and character counts close
enough for a similarity >= 0.9), with a dynamic programme vectorised over the pairs.
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.Scaffolds.MurckoScaffold import GetScaffoldForMol, MakeScaffoldGeneric

from biomx.errors import BiomxError
from biomx.protocols import Task, TestView

SIMILARITY = 0.9
FOLD = 10.0
RADIUS, BITS = 2, 1024
# A potency difference of exactly one log unit (e.g. 10 vs 100 nM) is not a cliff for MoleculeACE
# (fold > 10, strictly); in log units float rounding can put such a pair a hair above 1.
LOG_TOLERANCE = 1e-9
PAIR_CHUNK = 20_000  # pairs per vectorised Levenshtein block (bounds memory: chunk x length)
HISTOGRAM_CHUNK = 200_000  # pairs per block of the character-count bound


def _fingerprints(mols: list[Chem.Mol]) -> tuple[list, list]:
    """ECFP4 of each molecule and of its generic graph framework (MoleculeACE's scaffold)."""
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=RADIUS, fpSize=BITS)
    ecfp, frame = [], []
    for mol in mols:
        ecfp.append(generator.GetFingerprint(mol))
        try:
            skeleton = MakeScaffoldGeneric(mol)
        except Exception:  # RDKit rejects a few frameworks: MoleculeACE then takes the scaffold
            skeleton = GetScaffoldForMol(mol)
        frame.append(generator.GetFingerprint(skeleton))
    return ecfp, frame


def _levenshtein(a: np.ndarray, b: np.ndarray, la: np.ndarray, lb: np.ndarray) -> np.ndarray:
    """Edit distances of pairs of padded code arrays a[p, :la[p]] and b[p, :lb[p]].

    Wagner-Fischer row by row, vectorised over pairs; the in-row insertion chain
    D[j] = min_k<=j (T[k] + j - k) is a running minimum of T - j, so a row needs no Python loop.
    """
    pairs, width = b.shape
    j = np.arange(width + 1)
    row = np.broadcast_to(j, (pairs, width + 1)).copy()
    out = np.where(la == 0, lb, 0)
    for i in range(a.shape[1]):
        cost = (a[:, i : i + 1] != b).astype(np.int64)
        best = np.minimum(row[:, 1:] + 1, row[:, :-1] + cost)
        best = np.concatenate([np.full((pairs, 1), i + 1), best], axis=1)
        row = np.minimum.accumulate(best - j, axis=1) + j
        done = la == i + 1
        out[done] = row[done, lb[done]]
    return out


def _smiles_codes(smiles: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMILES as padded integer codes (pad -1), their lengths, and per-character counts."""
    lengths = np.array([len(s) for s in smiles], dtype=np.int64)
    alphabet = {c: k for k, c in enumerate(sorted(set("".join(smiles))))}
    codes = np.full((len(smiles), max(int(lengths.max(initial=0)), 1)), -1, dtype=np.int32)
    counts = np.zeros((len(smiles), max(len(alphabet), 1)), dtype=np.int16)
    for n, s in enumerate(smiles):
        k = np.fromiter((alphabet[c] for c in s), dtype=np.int32, count=len(s))
        codes[n, : len(s)] = k
        np.add.at(counts[n], k, 1)
    return codes, lengths, counts


def _levenshtein_similar(smiles: list[str], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Which candidate pairs (i, j) have normalised Levenshtein similarity >= SIMILARITY."""
    codes, lengths, counts = _smiles_codes(smiles)
    longest = np.maximum(lengths[i], lengths[j])
    allowed = np.floor((1.0 - SIMILARITY) * longest + 1e-9).astype(np.int64)  # distance <= this
    # Lower bounds on the distance: the length difference, and the surplus characters either way
    # (in blocks, so memory stays at block x alphabet however many candidates there are).
    close = np.abs(lengths[i] - lengths[j]) <= allowed
    positions = np.flatnonzero(close)
    for lo in range(0, len(positions), HISTOGRAM_CHUNK):
        block = positions[lo : lo + HISTOGRAM_CHUNK]
        diff = counts[i[block]].astype(np.int32) - counts[j[block]]
        bound = np.maximum(np.clip(diff, 0, None).sum(1), np.clip(-diff, 0, None).sum(1))
        close[block] = bound <= allowed[block]
    kept = np.flatnonzero(close)
    kept = kept[np.argsort(longest[kept], kind="stable")]  # similar widths share a block
    similar = np.zeros(len(i), dtype=bool)
    lo = 0
    while lo < len(kept):
        # A block ends after PAIR_CHUNK pairs or where strings get a quarter longer: one long
        # outlier does not pad thousands of short pairs to its length.
        limit = np.searchsorted(longest[kept], 1.25 * longest[kept[lo]] + 1, side="right")
        block = kept[lo : max(lo + 1, min(lo + PAIR_CHUNK, int(limit)))]
        a, b = i[block], j[block]
        la, lb = lengths[a], lengths[b]
        width_a, width_b = max(int(la.max()), 1), max(int(lb.max()), 1)
        distance = _levenshtein(codes[a, :width_a], codes[b, :width_b], la, lb)
        similar[block] = distance <= allowed[block]
        lo += len(block)
    return similar


def _potency_gap(values: np.ndarray, log_units: bool) -> np.ndarray:
    """Values on a log10 scale (potencies are logged); raises for a non-positive potency."""
    if log_units:
        return values
    measured = values[np.isfinite(values)]
    if (measured <= 0).any():
        raise BiomxError("cliff_compounds: potencies must be positive when log_units=False")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(values)


def cliff_compounds(smiles: list[str], values: np.ndarray, *, log_units: bool = True) -> np.ndarray:
    """Which molecules are activity-cliff compounds (MoleculeACE's definition, see the module).

    Args:
        smiles: the molecules; similarity is taken over all of them (MoleculeACE flags a compound
            on the whole data set, train and test together).
        values: one potency per molecule; NaN = not measured (never in a cliff).
        log_units: `values` are log10 potencies (pKi, pIC50, log units of any property): a cliff
            needs a difference of more than 1. False: raw potencies (e.g. nM), more than tenfold.

    Returns:
        A boolean array, True where the molecule is in at least one cliff pair.

    Raises:
        BiomxError: `values` is not one value per molecule, a SMILES does not parse, or a raw
            potency is not positive.
    """
    y = np.asarray(values, dtype=np.float64)
    if y.shape != (len(smiles),):
        raise BiomxError(
            f"cliff_compounds: got {y.size} values for {len(smiles)} molecules; expected one each"
        )
    y = _potency_gap(y, log_units)
    # RDKit's own messages are silenced: a failed parse is reported below as one line, and a
    # framework RDKit rejects (a valence message) has MoleculeACE's fallback.
    with rdBase.BlockLogs():
        mols = [Chem.MolFromSmiles(s) for s in smiles]
        bad = next((s for s, m in zip(smiles, mols, strict=True) if m is None), None)
        if bad is not None:
            raise BiomxError(f"cliff_compounds: RDKit cannot parse SMILES {bad!r}")
        ecfp, frame = _fingerprints(mols)
    lengths = np.array([len(s) for s in smiles], dtype=np.int64)
    flags = np.zeros(len(smiles), dtype=bool)
    candidates_i, candidates_j = [], []
    for i in range(len(smiles) - 1):
        if not np.isfinite(y[i]):
            continue
        j = np.arange(i + 1, len(smiles))
        gap = np.abs(y[j] - y[i]) > 1.0 + LOG_TOLERANCE  # NaN compares False: never a cliff
        if not gap.any():
            continue
        similar = (
            np.asarray(DataStructs.BulkTanimotoSimilarity(ecfp[i], ecfp[i + 1 :])) >= SIMILARITY
        )
        similar |= (
            np.asarray(DataStructs.BulkTanimotoSimilarity(frame[i], frame[i + 1 :])) >= SIMILARITY
        )
        cliff = gap & similar
        if cliff.any():
            flags[i] = True
            flags[j[cliff]] = True
        longest = np.maximum(lengths[i], lengths[j])
        rest = (
            gap
            & ~similar
            & (np.abs(lengths[j] - lengths[i]) <= (1.0 - SIMILARITY) * longest + 1e-9)
        )
        candidates_i.append(np.full(int(rest.sum()), i, dtype=np.int64))
        candidates_j.append(j[rest])
    if candidates_i:
        i, j = np.concatenate(candidates_i), np.concatenate(candidates_j)
        open_ = ~(flags[i] & flags[j])  # a pair of two known cliff compounds changes nothing
        i, j = i[open_], j[open_]
        similar = _levenshtein_similar(smiles, i, j)
        flags[i[similar]] = True
        flags[j[similar]] = True
    return flags


# ---------------------------------------------------------------------------------- report

TITLE = "Activity cliffs"
MIN_TEST_CLIFFS = 5  # `auto`: fewer cliff compounds in test give no usable RMSE
MAX_MOLECULES = 10_000  # the pair search is O(N^2): about 7 s for 5,000 molecules on 2 cores
DEFINITION = (
    "MoleculeACE's definition (van Tilborg et al., JCIM 2022): two molecules whose ECFP4, "
    "generic-framework ECFP4 or SMILES (normalised Levenshtein) similarity is at least 0.9 and "
    "whose targets differ by more than 1 (tenfold for a log10 potency) form a cliff pair; a cliff "
    "compound is in at least one such pair among all of the run's molecules (train, val and test)."
)


def _numbers(labels: list) -> np.ndarray:
    """The run's raw regression labels as floats; an empty or non-numeric cell is NaN."""
    out = np.full(len(labels), np.nan)
    for n, label in enumerate(labels):
        try:
            out[n] = float(label)
        except (TypeError, ValueError):
            pass  # not measured: never in a cliff pair
    return out


def _omitted(reason: str) -> dict:
    return {
        "title": TITLE,
        "text": f"{DEFINITION} Not compared: {reason}.",
        "json": {"omitted": reason},
    }


def cliff_section(task: Task, test: TestView, setting: str) -> dict | None:
    """Test RMSE on activity-cliff compounds vs the rest, as a report section.

    Only for a task whose metrics include an RMSE (asked through `quick_metrics`, so regression
    is recognised by what it reports, not by its name); None for other tasks or `setting` off.
    A section without the comparison, saying why, when it cannot be made (several targets, too
    many molecules, fewer than `MIN_TEST_CLIFFS` test cliff compounds).
    """
    preds, targets = np.asarray(test.predictions), np.asarray(test.targets, dtype=np.float64)
    if setting == "off" or not len(preds) or "rmse" not in task.quick_metrics(preds, targets):
        return None
    if preds.reshape(len(preds), -1).shape[1] != 1:
        return _omitted("the run has several targets; cliffs are defined for one potency")
    smiles = test.samples.inputs.smiles
    if len(smiles) > MAX_MOLECULES:
        return _omitted(
            f"{len(smiles)} molecules, more than the {MAX_MOLECULES} the pair search allows"
        )
    flags = cliff_compounds(smiles, _numbers(test.samples.labels))
    measured = np.isfinite(targets.reshape(len(targets)))
    cliff = flags[test.index] & measured
    rest = ~flags[test.index] & measured
    counts = {
        "cliff_compounds_all_splits": int(flags.sum()),
        "n_cliff": int(cliff.sum()),
        "n_non_cliff": int(rest.sum()),
    }
    if cliff.sum() < MIN_TEST_CLIFFS:
        section = _omitted(f"{int(cliff.sum())} test cliff compounds, fewer than {MIN_TEST_CLIFFS}")
        section["json"].update(counts)
        return section

    def rmse(mask: np.ndarray) -> float | None:
        value = (
            float(task.quick_metrics(preds[mask], targets[mask])["rmse"])
            if mask.any()
            else float("nan")
        )
        return value if np.isfinite(value) else None

    result = {
        **counts,
        "rmse_cliff": rmse(cliff),
        "rmse_non_cliff": rmse(rest),
        "rmse_all": rmse(measured),
    }
    rows = [
        ["cliff compounds", result["n_cliff"], result["rmse_cliff"]],
        ["non-cliff compounds", result["n_non_cliff"], result["rmse_non_cliff"]],
        ["all", int(measured.sum()), result["rmse_all"]],
    ]
    text = (f"{DEFINITION} A model that only interpolates between similar molecules errs most on cliff "
            f"compounds. {result['cliff_compounds_all_splits']} of the {len(smiles)} molecules are cliff compounds.")  # fmt: skip
    return {"title": TITLE, "text": text, "table": {"header": ["test compounds", "n", "RMSE"], "rows": rows},
            "json": result}  # fmt: skip
