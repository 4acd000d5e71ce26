"""Sequence explanations: ISM, IG, saliency, logos and motif discovery on real TF-bound DNA.

The model is hand-built, so the right answer is known: a convolution whose filters fire only
on a perfect motif match, then max pooling. Planting the motif into real Oct4/Mafk windows
(which lack it) gives sequences whose prediction depends on exactly those bases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from biomx.errors import BiomxError
from biomx.modalities.sequence.interpret import (
    draw_logo,
    find_motifs,
    in_silico_mutagenesis,
    integrated_gradients,
    ism_heatmap_figure,
    logo_figure,
    match_motif,
    saliency,
)
from motif_helpers import OCT4, OCT4_RC, motif_model, read_fasta, to_one_hot

MARE_G, MARE_C = "TGCTGAGTCAGCA", "TGCTGACTCAGCA"  # reverse complements of each other





def without(seqs: list[str], *motifs: str) -> list[str]:
    """Sequences that contain none of the motifs, on either strand (case-insensitive)."""
    return [s for s in seqs if not any(m in s.upper() for m in motifs)]


def plant(seq: str, motif: str, at: int) -> str:
    return seq[:at] + motif + seq[at + len(motif):]




@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add overhead, and on a busy machine contention
    makes Captum's many small batches ~20x slower. Restored for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def oct4_planted() -> tuple[torch.Tensor, list[int], list[str]]:
    """200 real Oct4 windows without the octamer, each with it planted at a random place and
    strand; returns one-hot (200, 4, 200), the motif starts and the sequences."""
    rng = np.random.default_rng(0)
    seqs = without(read_fasta("sample.fa"), OCT4, OCT4_RC)[:200]
    starts = [int(s) for s in rng.integers(0, 192, size=len(seqs))]
    planted = [plant(s, OCT4 if rng.random() < 0.5 else OCT4_RC, at)
               for s, at in zip(seqs, starts, strict=True)]
    return to_one_hot(planted), starts, planted


def test_ism_is_zero_at_reference_negative_in_the_motif_and_zero_elsewhere(oct4_planted):
    x, starts, _ = oct4_planted
    model = motif_model(OCT4, OCT4_RC)
    model.train()
    effects = in_silico_mutagenesis(model, x[0], batch_size=97)  # uneven chunks on purpose
    assert effects.shape == (1, 4, 200)
    assert model.training and model[0].training  # training mode restored
    assert torch.all(effects[0][x[0] == 1] == 0)
    motif = slice(starts[0], starts[0] + 8)
    mutated = effects[0, :, motif][x[0, :, motif] == 0]
    assert len(mutated) == 24 and torch.allclose(mutated, torch.full((24,), -4.0), atol=1e-5)
    outside = torch.ones(200, dtype=torch.bool)
    outside[motif] = False
    assert effects[0][:, outside].abs().max() < 1e-5
    # A batch gives each sequence's own effects.
    both = in_silico_mutagenesis(model, x[:2])
    assert torch.allclose(both[0], effects[0]) and (both[1] < -3.9).sum() == 24


def test_ism_rejects_a_target_the_model_does_not_have(oct4_planted):
    with pytest.raises(BiomxError, match="target 1 is out of range"):
        in_silico_mutagenesis(motif_model(OCT4), oct4_planted[0][0], target=1)
    with pytest.raises(BiomxError, match=r"\(B, 4, L\)"):
        in_silico_mutagenesis(motif_model(OCT4), torch.zeros(2, 5, 10))


@pytest.mark.parametrize("method", ["saliency", "zeros", "uniform", "shuffle"])
def test_gradient_attributions_concentrate_on_the_planted_motif(oct4_planted, method):
    x, starts, _ = oct4_planted
    x = x[:32]
    model = nn.Sequential(nn.Dropout(0.5), *motif_model(OCT4, OCT4_RC))
    model.train()
    if method == "saliency":
        attr = saliency(model, x)
    else:
        attr = integrated_gradients(model, x, baseline=method, steps=64)
    assert attr.shape == x.shape and not attr.requires_grad
    assert model.training and model[0].training
    assert torch.all(attr[x == 0] == 0)  # x input: absent bases contribute nothing
    per_position = attr.abs().sum(dim=1)
    for i, start in enumerate(starts[:32]):
        inside = per_position[i, start:start + 8].sum()
        assert inside > 0.99 * per_position[i].sum()
        # A shuffled baseline may have a motif base in place: no change, no attribution.
        if method != "shuffle":
            assert (attr[i, :, start:start + 8].sum(dim=0) > 0).all()
    if method == "zeros":
        # Completeness: from an all-zero input (logit -2) to the motif (logit 2); the ReLU
        # switches on at 7/8 of the path, a kink that costs the quadrature a few percent.
        assert torch.allclose(attr.sum(dim=(1, 2)), torch.full((32,), 4.0), atol=0.3)


def test_integrated_gradients_rejects_an_unknown_baseline(oct4_planted):
    with pytest.raises(BiomxError, match="unknown IG baseline 'random'"):
        integrated_gradients(motif_model(OCT4), oct4_planted[0][:2], baseline="random")


def test_draw_logo_stacks_positive_up_and_negative_down():
    from matplotlib.figure import Figure

    scores = np.zeros((4, 6))
    scores[0, 1], scores[2, 1], scores[3, 4] = 1.0, 0.5, -2.0
    ax = Figure().add_subplot()
    draw_logo(ax, scores, start=10)
    (collection,) = ax.collections
    assert len(collection.get_paths()) == 3  # zero scores draw nothing
    tops = [path.get_extents() for path in collection.get_paths()]
    assert max(b.y1 for b in tops) == pytest.approx(1.5)  # A and G stacked: 1 + 0.5
    assert min(b.y0 for b in tops) == pytest.approx(-2.0)
    assert ax.get_xlim() == (9.5, 15.5)
    with pytest.raises(BiomxError, match=r"shape \(4, L\)"):
        draw_logo(ax, np.zeros((3, 5)))


def test_figures_render_to_non_trivial_pngs(oct4_planted, tmp_path):
    x, starts, seqs = oct4_planted
    model = motif_model(OCT4, OCT4_RC)
    attr = saliency(model, x[:1])[0].numpy()
    effects = in_silico_mutagenesis(model, x[0])[0].numpy()
    window = slice(starts[0] - 10, starts[0] + 18)
    figures = {
        "logo200.png": logo_figure(attr, title="Oct4 window, saliency"),
        "logo_zoom.png": logo_figure(attr[:, window], title="motif", start=window.start),
        "ism.png": ism_heatmap_figure(effects[:, window], seqs[0][window], title="ISM"),
        "ism200.png": ism_heatmap_figure(effects, seqs[0]),
    }
    for name, fig in figures.items():
        fig.savefig(tmp_path / name, dpi=80)
        assert (tmp_path / name).stat().st_size > 5_000, name
    with pytest.raises(BiomxError, match="length L"):
        ism_heatmap_figure(effects, seqs[0][:50])


def test_find_motifs_recovers_the_octamer_from_both_strands(oct4_planted):
    x, _, _ = oct4_planted
    attr = saliency(motif_model(OCT4, OCT4_RC), x)
    motifs = find_motifs(attr.numpy(), x.numpy(), width=10, top=3)
    best = motifs[0]
    # Half the motifs were planted on each strand: one cluster means the strands were merged.
    assert best["support"] == 200 and len(best["seqlets"]) == 200
    assert {strand for _, _, strand in best["seqlets"]} == {"+", "-"}
    assert np.asarray(best["pwm"]).shape == (4, 10)
    assert OCT4 in best["consensus"] or OCT4_RC in best["consensus"]
    assert match_motif(np.asarray(best["pwm"]), OCT4)["score"] > 0.95
    assert best["mean_attribution"] == pytest.approx(32.0)  # 8 bases x 4 each


def test_find_motifs_separates_two_factors():
    """Octamer planted in real Oct4 windows, the MARE in real Mafk windows: two clusters."""
    rng = np.random.default_rng(1)
    oct4 = [plant(s, OCT4, int(rng.integers(0, 190)))
            for s in without(read_fasta("sample.fa"), OCT4, OCT4_RC)[:80]]
    mafk = [plant(s, MARE_G if rng.random() < 0.5 else MARE_C, int(rng.integers(0, 185)))
            for s in without(read_fasta("sample2.fa"), OCT4, OCT4_RC, MARE_G, MARE_C)[:80]]
    x = to_one_hot(oct4 + mafk)
    model = motif_model(OCT4, OCT4_RC, MARE_G, MARE_C)
    attr = integrated_gradients(model, x, baseline="shuffle", steps=32)
    motifs = find_motifs(attr.numpy(), x.numpy(), width=15, top=2)
    assert sorted(m["support"] for m in motifs) == [80, 80]
    scores = {known: max(match_motif(np.asarray(m["pwm"]), known)["score"] for m in motifs)
              for known in (OCT4, "TGCTGASTCAGCA")}
    assert min(scores.values()) > 0.95, scores
    with pytest.raises(BiomxError, match="same shape"):
        find_motifs(attr.numpy(), x.numpy()[:, :, :100])


def test_find_motifs_returns_nothing_without_attribution():
    x = to_one_hot(read_fasta("sample.fa")[:5]).numpy()
    assert find_motifs(np.zeros_like(x), x) == []


def test_match_motif_handles_iupac_and_reverse_complement():
    pwm = to_one_hot(["CCATGCAAATGG"])[0].numpy()
    assert match_motif(pwm, OCT4) == {"score": 1.0, "offset": 2, "strand": "+"}
    assert match_motif(pwm, OCT4_RC) == {"score": 1.0, "offset": 2, "strand": "-"}
    assert match_motif(pwm, "atgcaaat")["score"] == 1.0  # case-insensitive
    # W = A or T, N = anything: still a perfect match; a wrong letter costs 1/8.
    assert match_motif(pwm, "WTGCNAAT")["score"] == 1.0
    assert match_motif(pwm, "GGGGGGGG")["score"] < 0.5
    # Half C, half G in the middle column: S takes both, C only half.
    mare = to_one_hot([MARE_G])[0].numpy()
    mare[:, 6] = [0.0, 0.5, 0.5, 0.0]
    assert match_motif(mare, "TGCTGASTCAGCA")["score"] == pytest.approx(1.0)
    assert match_motif(mare, MARE_C)["score"] == pytest.approx(12.5 / 13)
    # A consensus longer than the PWM slides over it: negative offset.
    short = to_one_hot(["GCAAAT"])[0].numpy() * 10  # counts are normalised too
    assert match_motif(short, OCT4) == {"score": 1.0, "offset": -2, "strand": "+"}
    with pytest.raises(BiomxError, match="IUPAC"):
        match_motif(pwm, "ATGX")
    with pytest.raises(BiomxError, match=r"\(4, w\)"):
        match_motif(pwm[:3], OCT4)
