"""Explanations for DNA sequence models: which bases drive a prediction, and which motifs.

Inputs are one-hot DNA (B, 4, L) in ACGT order, models map them to (B, K) logits and `target`
picks the logit explained (0 for a single-logit binary model: the positive class).
`in_silico_mutagenesis` gives the exact effect of all 3L substitutions (3L forward passes);
`integrated_gradients` (Captum) and `saliency` return "x input" scores: only the observed base
of a position scores, its contribution, as a logo shows. Models are run in eval mode and left
as found. `find_motifs` clusters high-attribution windows of many sequences into PWMs (a small
TF-MoDISco); `match_motif` compares a PWM with a known consensus.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from captum.attr import InputXGradient, IntegratedGradients
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import PathPatch
from matplotlib.path import Path as MplPath
from matplotlib.textpath import TextPath
from matplotlib.transforms import Affine2D
from torch import Tensor, nn

from biomx.errors import BiomxError
from biomx.explain import eval_mode, output_column

BASES = "ACGT"
IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "U": "T", "R": "AG", "Y": "CT", "S": "CG",
         "W": "AT", "K": "GT", "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG",
         "N": "ACGT"}
_COMPLEMENT = str.maketrans("ACGTURYSWKMBDHVN", "TGCAAYRSWMKVHDBN")
LOGO_COLORS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


def _as_batch(x: Tensor, name: str) -> Tensor:
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if x.dim() != 3 or x.shape[1] != 4:
        raise BiomxError(f"{name} needs one-hot DNA of shape (B, 4, L) or (4, L), "
                         f"got {tuple(x.shape)}")
    return x.detach().float()


def in_silico_mutagenesis(model: nn.Module, x: Tensor, *, target: int = 0,
                          batch_size: int = 512) -> Tensor:
    """Predicted change of the target logit for every single-base substitution.

    Args:
        model: maps (B, 4, L) one-hot DNA to (B, K) logits.
        x: one sequence (4, L) or a batch (B, 4, L).
        target: the logit to explain.
        batch_size: mutants per forward pass.

    Returns:
        (B, 4, L) float tensor: effects[b, k, j] = logit(sequence b with base k at j) -
        logit(sequence b); 0 at observed bases (a non-one-hot column, e.g. N, gets all 4).

    Raises:
        BiomxError: x not (B, 4, L), model output not (B, K), or target out of range.
    """
    x = _as_batch(x, "in_silico_mutagenesis")
    effects = torch.zeros_like(x)
    with eval_mode(model), torch.no_grad():
        for i, sequence in enumerate(x):
            reference = output_column(model(sequence[None]), target, 1, "sequences")[0]
            # Every (base, position) that is not already the observed base: 3L mutants.
            bases, positions = torch.nonzero(sequence != 1, as_tuple=True)
            for lo in range(0, len(bases), batch_size):
                b, p = bases[lo:lo + batch_size], positions[lo:lo + batch_size]
                rows = torch.arange(len(b), device=x.device)
                mutants = sequence.expand(len(b), -1, -1).clone()
                mutants[rows, :, p] = 0.0
                mutants[rows, b, p] = 1.0
                effects[i, b, p] = output_column(model(mutants), target, len(b), "sequences") - reference
    return effects


def _shuffled(x: Tensor, seed: int) -> Tensor:
    """Each sequence with its positions permuted: same base composition, motifs destroyed."""
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(x.shape[2], generator=generator) for _ in range(x.shape[0])]
    return torch.stack([seq[:, perm.to(x.device)] for seq, perm in zip(x, perms, strict=True)])


def integrated_gradients(model: nn.Module, x: Tensor, *, target: int = 0, steps: int = 50,
                         baseline: str = "shuffle", shuffles: int = 4, seed: int = 0,
                         batch_size: int = 1024) -> Tensor:
    """Integrated gradients (Captum), returned as attribution x input.

    Raw IG also scores absent bases (their value moves from the baseline's to 0); multiplying
    by the one-hot input keeps the observed base's contribution, the usual form for logos.
    (Raw scores sum to logit(x) - logit(baseline); kept ones lack the absent bases' share.)
    One shuffled baseline gives no attribution where it has the input's base; averaging over
    `shuffles` baselines fills that hole, at steps x shuffles passes per sequence.

    Args:
        model: maps (B, 4, L) one-hot DNA to (B, K) logits.
        x: (B, 4, L) one-hot batch.
        target: the logit to explain.
        steps: integration steps.
        baseline: "shuffle" (positions permuted: same composition, no motifs), "zeros" or
            "uniform" (0.25 for every base).
        shuffles: shuffled baselines averaged over ("shuffle" only).
        seed: seed of the shuffles.
        batch_size: interpolated inputs per forward pass (Captum's internal_batch_size).

    Returns:
        (B, 4, L) float tensor of contributions, zero at absent bases.

    Raises:
        BiomxError: bad input shape, unknown baseline, bad model output or target.
    """
    x = _as_batch(x, "integrated_gradients")
    if baseline not in ("shuffle", "zeros", "uniform"):
        raise BiomxError(f"unknown IG baseline {baseline!r}; use 'shuffle', 'zeros' or 'uniform'")
    if shuffles < 1:
        raise BiomxError(f"IG needs shuffles >= 1, got {shuffles}")
    repeats = shuffles if baseline == "shuffle" else 1
    inputs = x.repeat(repeats, 1, 1)  # copy k of the batch is paired with shuffle k
    if baseline == "shuffle":
        base = _shuffled(inputs, seed)
    else:
        base = torch.full_like(inputs, 0.0 if baseline == "zeros" else 0.25)
    attr = _attribute(IntegratedGradients(model), model, inputs, target, baselines=base,
                      n_steps=steps, internal_batch_size=max(batch_size, 1))
    return attr.reshape(repeats, *x.shape).mean(dim=0) * x


def _attribute(method, model: nn.Module, inputs: Tensor, target: int, **kwargs) -> Tensor:
    """Run a Captum method in eval mode with gradients on, after checking the target."""
    with eval_mode(model):
        with torch.no_grad():
            output_column(model(inputs[:1]), target, 1, "sequences")
        with torch.enable_grad():
            # Our own leaf copy: the caller's tensor never gains requires_grad.
            leaf = inputs.detach().clone().requires_grad_(True)
            return method.attribute(leaf, target=target, **kwargs).detach()


def saliency(model: nn.Module, x: Tensor, *, target: int = 0) -> Tensor:
    """Gradient x input, the first-order contribution of each observed base.

    Args:
        model: maps (B, 4, L) one-hot DNA to (B, K) logits.
        x: (B, 4, L) one-hot batch.
        target: the logit to explain.

    Returns:
        (B, 4, L) float tensor, zero at absent bases.

    Raises:
        BiomxError: bad input shape, model output or target.
    """
    return _attribute(InputXGradient(model), model, _as_batch(x, "saliency"), target)


@lru_cache(maxsize=64)
def _glyph(letter: str) -> MplPath:
    """The outline of a bold letter, moved and scaled to fill the unit square."""
    path = TextPath((0, 0), letter, size=1, prop=FontProperties(family="DejaVu Sans",
                                                                weight="bold"))
    box = path.get_extents()
    unit = Affine2D().translate(-box.x0, -box.y0).scale(1 / box.width, 1 / box.height)
    return unit.transform_path(path)


def draw_logo(ax: Axes, scores: np.ndarray, *, alphabet: str = BASES,
              colors: dict[str, str] | None = None, start: int = 0) -> None:
    """Draw a sequence logo: letter heights are scores, stacked up from 0 if positive and
    down if negative, the largest farthest from the axis.

    Args:
        ax: the matplotlib axes to draw into.
        scores: (len(alphabet), L) array, e.g. one sequence's attributions.
        alphabet: the letters of the rows.
        colors: letter -> colour; default A green, C blue, G orange, T red, others grey.
        start: coordinate of the first column (for the x axis).

    Raises:
        BiomxError: if scores is not (len(alphabet), L).
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64))
    if scores.ndim != 2 or scores.shape[0] != len(alphabet):
        raise BiomxError(f"draw_logo needs scores of shape ({len(alphabet)}, L), "
                         f"got {scores.shape}")
    colors = {**LOGO_COLORS, **(colors or {})}
    length = scores.shape[1]
    peak = np.abs(scores).sum(axis=0).max(initial=0.0)
    patches, top, bottom = [], 0.0, 0.0
    for j in range(length):
        up, down = 0.0, 0.0
        for k in np.argsort(np.abs(scores[:, j])):  # small first: the largest ends up outermost
            height = scores[k, j]
            if abs(height) <= 1e-6 * peak:  # invisible; skipping keeps long logos fast
                continue
            y0 = up if height > 0 else down - abs(height)
            place = Affine2D().scale(0.9, abs(height)).translate(start + j - 0.45, y0)
            letter = alphabet[k]
            patches.append(PathPatch(place.transform_path(_glyph(letter)), linewidth=0,
                                     facecolor=colors.get(letter, "#777777")))
            up, down = (up + height, down) if height > 0 else (up, down + height)
        top, bottom = max(top, up), min(bottom, down)
    # One collection instead of hundreds of artists: drawing a 200 bp logo stays fast.
    ax.add_collection(PatchCollection(patches, match_original=True))
    span = (top - bottom) or 1.0
    ax.set_xlim(start - 0.5, start + length - 0.5)
    ax.set_ylim(bottom - 0.05 * span, top + 0.05 * span)
    ax.axhline(0.0, color="black", linewidth=0.5)


def _width(length: int) -> float:
    return float(np.clip(length * 0.1, 4.0, 24.0))


def logo_figure(scores: np.ndarray, title: str = "", start: int = 0) -> Figure:
    """A one-panel figure with the sequence logo of scores (see `draw_logo`).

    Args:
        scores: (4, L) scores in ACGT order: attributions, or a PWM (probabilities or bits).
        title: figure title.
        start: coordinate of the first column (for the x axis).

    Returns:
        A matplotlib Figure (render with `biomx.report.html.figure_to_data_uri`).

    Raises:
        BiomxError: if scores is not (4, L).
    """
    scores = np.asarray(scores)
    fig = Figure(figsize=(_width(scores.shape[-1]), 2.2), layout="constrained")
    ax = fig.add_subplot()
    draw_logo(ax, scores, start=start)
    ax.set_xlabel("position")
    ax.set_ylabel("contribution")
    ax.set_title(title)
    return fig


def ism_heatmap_figure(effects: np.ndarray, sequence: str, title: str = "",
                       start: int = 0) -> Figure:
    """Heatmap of substitution effects: rows A, C, G, T, one column per position.

    Blue lowers the logit, red raises it (scale symmetric around 0); black dots mark the
    reference bases.

    Args:
        effects: (4, L) effects, e.g. one sequence from `in_silico_mutagenesis`.
        sequence: the reference sequence, length L.
        title: figure title.
        start: coordinate of the first column (for the x axis).

    Returns:
        A matplotlib Figure.

    Raises:
        BiomxError: if effects is not (4, L) or the sequence length differs from L.
    """
    effects = np.nan_to_num(np.asarray(effects, dtype=np.float64))
    if effects.ndim != 2 or effects.shape[0] != 4 or len(sequence) != effects.shape[1]:
        raise BiomxError(f"ism_heatmap_figure needs (4, L) effects and a sequence of length L, "
                         f"got {effects.shape} and length {len(sequence)}")
    limit = float(np.abs(effects).max()) or 1.0
    fig = Figure(figsize=(_width(len(sequence)), 2.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(effects, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit,
                      interpolation="nearest",
                      extent=(start - 0.5, start + len(sequence) - 0.5, 3.5, -0.5))
    ref = [(start + j, BASES.index(b)) for j, b in enumerate(sequence.upper()) if b in BASES]
    if ref:
        columns, rows = zip(*ref, strict=True)
        ax.scatter(columns, rows, s=4, c="black", marker="o", linewidths=0)
    ax.set_yticks(range(4), list(BASES))
    if len(sequence) <= 60:  # short enough to label every column with its base
        ax.set_xticks(range(start, start + len(sequence)), list(sequence.upper()), fontsize=7)
    ax.set_xlabel("position")
    fig.colorbar(image, ax=ax, label="change of logit", fraction=0.03, pad=0.01)
    ax.set_title(title)
    return fig


def _flip(window: np.ndarray, strand: str) -> np.ndarray:
    """A (4, w) window as is, or reverse complemented ("-": ACGT reversed is TGCA)."""
    return window[::-1, ::-1] if strand == "-" else window


def _seqlets(attr: np.ndarray, width: int, per_sequence: int) -> list[tuple[float, int, int]]:
    """(strength, sequence, start) of the strongest non-overlapping windows, strongest first."""
    per_position = np.abs(attr).sum(axis=1)
    cumulative = np.concatenate([np.zeros((len(attr), 1)), per_position.cumsum(axis=1)], axis=1)
    window_sums = cumulative[:, width:] - cumulative[:, :-width]
    found = []
    for n, sums in enumerate(window_sums):
        for _ in range(per_sequence):
            best = int(np.argmax(sums))
            if sums[best] <= 0:
                break
            # Centre on the attribution mass: a motif shorter than the window then sits at
            # the same place in every seqlet, however argmax breaks the tie between shifts.
            weights = per_position[n, best:best + width]
            centre = best + float(weights @ np.arange(width)) / float(weights.sum())
            start = round(centre - (width - 1) / 2)  # may hang over an end: padded there
            found.append((float(sums[best]), n, start))
            sums[max(0, start - width + 1):max(0, start + width)] = -np.inf
    return sorted(found, key=lambda seqlet: -seqlet[0])


def _best_match(row: np.ndarray, start: int, width: int,
                centroids: list[np.ndarray]) -> tuple[float, int, int, str]:
    """Best cosine similarity of a window of `row` (4, L), at `start` shifted by up to
    width // 3 on either strand, with any centroid: (similarity, centroid, start, strand)."""
    shift = width // 3
    options = [(start + s, strand) for s in range(-shift, shift + 1) for strand in "+-"
               if 0 <= start + s <= row.shape[1] - width]
    windows = np.stack([_flip(row[:, s:s + width], strand) for s, strand in options])
    flat = windows.reshape(len(options), -1)
    targets = np.stack(centroids).reshape(len(centroids), -1)
    norms = np.outer(np.linalg.norm(flat, axis=1), np.linalg.norm(targets, axis=1))
    similarity = flat @ targets.T / np.maximum(norms, 1e-12)
    option, cluster = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
    return float(similarity[option, cluster]), int(cluster), *options[option]


def _greedy(seqlets: list[tuple[float, int, int]], attr: np.ndarray, width: int,
            min_similarity: float, seeds: list[np.ndarray]) -> tuple[list, list]:
    """Add each seqlet to the best-matching cluster or start a new one: (sums, members).

    A cluster's centroid is its seed plus the sum of its aligned attribution windows."""
    sums = [seed.copy() for seed in seeds]
    members: list[list[tuple[int, int, str]]] = [[] for _ in seeds]
    for _, n, start in seqlets:
        similarity, cluster, s, strand = (_best_match(attr[n], start, width, sums) if sums
                                          else (-1.0, 0, start, "+"))
        if similarity < min_similarity:
            cluster, s, strand = len(sums), start, "+"
            sums.append(np.zeros((4, width)))
            members.append([])
        sums[cluster] += _flip(attr[n, :, s:s + width], strand)
        members[cluster].append((n, s, strand))
    return sums, members


def find_motifs(attributions: np.ndarray, sequences_onehot: np.ndarray, *, width: int = 10,
                top: int = 3, per_sequence: int = 1,
                min_similarity: float = 0.7) -> list[dict]:
    """Discover motifs: cluster high-attribution windows (seqlets) and build their PWMs.

    A small TF-MoDISco: (1) take the `per_sequence` windows of `width` with the largest total
    |attribution| in each sequence, centred on their attribution mass; (2) strongest first,
    add each seqlet to the cluster whose summed attribution it matches best (cosine
    similarity, over shifts of up to width // 3 and both strands) if that similarity is at
    least `min_similarity`, else start a new cluster; (3) merge clusters whose centroids
    match and assign every seqlet again; (4) count each cluster's aligned bases into a PWM.
    Clustering on attributions, not bases, ignores flanks the model does not use and keeps
    activating and repressing motifs apart.

    Args:
        attributions: (N, 4, L) contribution scores, e.g. from `integrated_gradients`.
        sequences_onehot: (N, 4, L) the one-hot sequences they explain.
        width: seqlet width.
        top: number of clusters returned.
        per_sequence: seqlets taken per sequence.
        min_similarity: cosine similarity needed to join a cluster.

    Returns:
        Up to `top` clusters, largest first: {"pwm": (4, width) nested list of base
        frequencies (ACGT rows), "consensus": str (the top base of each column, "N" where no
        base reaches 0.5), "support": number of seqlets, "mean_attribution": mean summed
        attribution of its seqlets, "seqlets": [(sequence index, start, strand), ...]} (a
        window at a sequence end may start before 0 or end after L).

    Raises:
        BiomxError: if the arrays differ in shape, are not (N, 4, L), or width > L.
    """
    attr = np.nan_to_num(np.asarray(attributions, dtype=np.float64))
    onehot = np.asarray(sequences_onehot, dtype=np.float64)
    if attr.shape != onehot.shape or attr.ndim != 3 or attr.shape[1] != 4:
        raise BiomxError(f"find_motifs needs attributions and sequences of the same shape "
                         f"(N, 4, L), got {attr.shape} and {onehot.shape}")
    if not 1 <= width <= attr.shape[2]:
        raise BiomxError(f"motif width {width} must be between 1 and the length {attr.shape[2]}")
    # Zero padding lets a window hang over a sequence end, so a motif at the very edge is
    # still aligned with the others (the missing bases simply do not count in the PWM).
    pad = ((0, 0), (0, 0), (width, width))
    attr, onehot = np.pad(attr, pad), np.pad(onehot, pad)
    seqlets = [(strength, n, start + width)
               for strength, n, start in _seqlets(attr[:, :, width:-width], width, per_sequence)]
    sums, members = _greedy(seqlets, attr, width, min_similarity, seeds=[])
    # Greedy order can split one motif in two when its first seqlets are sparse (IG from a
    # shuffled baseline gives 0 where the baseline has the same base). Keep one centroid per
    # distinct motif, largest first, and assign every seqlet again against those.
    # A seed keeps its first-pass weight, so a few sparse seqlets cannot pull it around.
    seeds: list[np.ndarray] = []
    for c in sorted(range(len(sums)), key=lambda c: -len(members[c])):
        padded = np.pad(sums[c], ((0, 0), (width, width)))
        if not seeds or _best_match(padded, width, width, seeds)[0] < min_similarity:
            seeds.append(sums[c])
    _, members = _greedy(seqlets, attr, width, min_similarity, seeds)
    motifs = []
    for group in filter(None, members):
        count = sum(_flip(onehot[n, :, s:s + width], strand) for n, s, strand in group)
        pwm = count / np.maximum(count.sum(axis=0, keepdims=True), 1e-12)
        consensus = "".join(BASES[k] if pwm[k, j] >= 0.5 else "N"
                            for j, k in enumerate(pwm.argmax(axis=0)))
        totals = [attr[n, :, s:s + width].sum() for n, s, _ in group]
        motifs.append({"pwm": pwm.tolist(), "consensus": consensus, "support": len(group),
                       "mean_attribution": float(np.mean(totals)),
                       "seqlets": [(n, s - width, strand) for n, s, strand in group]})
    motifs.sort(key=lambda m: (-m["support"], -abs(m["mean_attribution"])))
    return motifs[:top]


def match_motif(pwm: np.ndarray, consensus: str) -> dict:
    """Best alignment of a known consensus (IUPAC codes allowed) with a PWM, both strands.

    The shorter of the two slides fully inside the longer. At each offset the score is the
    mean, over the aligned columns, of the PWM probability of the consensus letter (for a
    code such as S = C or G, the summed probability of its bases).

    Args:
        pwm: (4, w) base frequencies or counts (ACGT rows; columns are normalised here).
        consensus: e.g. "ATGCAAAT" or "TGCTGASTCAGCA".

    Returns:
        {"score": 0..1, "offset": the PWM column of the (reverse-complemented, on "-")
        consensus' first letter, negative if the consensus is longer, "strand": "+" or "-"}.

    Raises:
        BiomxError: if pwm is not (4, w) or the consensus has a letter that is no IUPAC code.
    """
    p = np.asarray(pwm, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != 4 or p.shape[1] == 0:
        raise BiomxError(f"match_motif needs a (4, w) PWM, got shape {p.shape}")
    p = p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)
    consensus = consensus.upper()
    bad = sorted(set(consensus) - set(IUPAC))
    if not consensus or bad:
        raise BiomxError(f"consensus {consensus!r} must be IUPAC DNA letters (bad: {bad})")
    w, k = p.shape[1], len(consensus)
    best = {"score": -1.0, "offset": 0, "strand": "+"}
    for strand, motif in (("+", consensus), ("-", consensus.translate(_COMPLEMENT)[::-1])):
        allowed = np.array([[base in IUPAC[c] for c in motif] for base in BASES], dtype=float)
        for offset in range(min(0, w - k), max(0, w - k) + 1):
            first, last = max(0, -offset), min(k, w - offset)  # aligned consensus letters
            cols = np.arange(first, last)
            score = float((p[:, cols + offset] * allowed[:, cols]).sum(axis=0).mean())
            if score > best["score"] + 1e-12:
                best = {"score": score, "offset": offset, "strand": strand}
    return best
