"""Tests for biomx.models.sequence: the DNA and protein sequence classifiers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biomx.errors import ConfigError
from biomx.models import sequence
from biomx.models.registry import build_model, count_parameters, list_models


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Run this module single-threaded, then restore the thread count.

    These are small batches of small models: extra intra-op threads only add synchronisation,
    and on a busy 2-core machine a thread that is descheduled stalls every parallel region
    (measured here: 9 s for the module with 1 thread, over 3 minutes with 2 next to a training
    run).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DNA_MODELS = ["deepsea", "basset", "danq", "sequence_transformer"]
PROTEIN_MODELS = ["protein_cnn", "protein_lstm"]
MASKED_MODELS = ["protein_cnn", "protein_lstm", "sequence_transformer"]


def one_hot(n: int, alphabet: int, length: int, seed: int = 0) -> torch.Tensor:
    """(n, alphabet, length) random one-hot sequences."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, alphabet, (n, length), generator=gen)
    return F.one_hot(idx, alphabet).transpose(1, 2).float()


def encode_dna(seqs: list[str]) -> torch.Tensor:
    """One-hot (n, 4, L) in ACGT order; N becomes an all-zero column."""
    table = {base: i for i, base in enumerate("ACGT")}
    x = torch.zeros(len(seqs), 4, len(seqs[0]))
    for i, seq in enumerate(seqs):
        for j, base in enumerate(seq):
            if base in table:
                x[i, table[base], j] = 1.0
    return x


def check_forward_backward(model: torch.nn.Module, x: torch.Tensor, out_dim: int) -> None:
    out = model(x)
    assert out.shape == (x.shape[0], out_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("length", [50, 200, 1000])
@pytest.mark.parametrize("name", DNA_MODELS)
def test_dna_models_forward_backward_any_length(name: str, length: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=4, out_dim=3)
    check_forward_backward(model, one_hot(3, 4, length), out_dim=3)


@pytest.mark.parametrize("length", [50, 120])
@pytest.mark.parametrize("name", [*PROTEIN_MODELS, "sequence_transformer"])
def test_protein_models_forward_backward(name: str, length: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=20, out_dim=3)
    check_forward_backward(model, one_hot(3, 20, length), out_dim=3)


def test_protein_lstm_stacked_layers() -> None:
    torch.manual_seed(0)
    model = sequence.protein_lstm(out_dim=2, hidden=16, layers=3)
    check_forward_backward(model, one_hot(3, 20, 60), out_dim=2)


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        # 15.6M: conv tower 4.9M + dense 12 positions x 960 channels -> 925 (10.7M)
        ("deepsea", 15.0e6, 16.0e6),
        # 2.2M: the original's 4.1M less 1.8M in its 2000-input dense layer (global pool here)
        ("basset", 2.1e6, 2.2e6),
        # 2.3M: conv 34k + BiLSTM 1.6M + dense 0.6M (the original's 44M flatten dense is gone)
        ("danq", 2.2e6, 2.3e6),
        # 0.93M: 4 layers x 198k + 131k learned positions for 1024 tokens
        ("sequence_transformer", 0.9e6, 1.0e6),
        ("protein_cnn", 40e3, 50e3),  # 3 kernels x 128 filters
        ("protein_lstm", 150e3, 160e3),  # 2 x 77k per direction
    ],
)
def test_parameter_counts_at_defaults(name: str, low: float, high: float) -> None:
    assert low < count_parameters(build_model(name, out_dim=1)) < high


def test_deepsea_length_sizes_the_dense_layer() -> None:
    # at `length` bp the conv tower leaves length // 16 positions, each feeding the dense layer
    short = count_parameters(sequence.deepsea(length=200))  # 12 positions
    long = count_parameters(sequence.deepsea(length=1000))  # 62 positions
    assert long - short == (62 - 12) * 960 * 925
    with pytest.raises(ConfigError, match="length"):
        build_model("deepsea", length=8)


def test_builders_work_with_only_in_channels_and_out_dim() -> None:
    # any alphabet size works; `biomx models` counts with each model's own alphabet (4 or 20)
    rows = {row["name"]: row for row in list_models(in_channels=1, out_dim=2)}
    for name in [*DNA_MODELS, *PROTEIN_MODELS]:
        assert rows[name]["modalities"] == ("sequence",)
        assert count_parameters(build_model(name, out_dim=2)) == rows[name]["parameters"]
        model = build_model(name, in_channels=1, out_dim=2).eval()
        assert model(torch.rand(2, 1, 200)).shape == (2, 2)
    with pytest.raises(ConfigError, match="divisible"):
        build_model("sequence_transformer", dim=30, heads=4)


def test_padding_is_trailing_all_zero_columns() -> None:
    # an N inside a sequence is a position (unknown base); only the zeros after the last base pad
    mask = sequence._length_mask(encode_dna(["ACNGTNN", "NNANNNN", "NNNNNNN"]))
    expected = [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]]
    assert mask.tolist() == [[bool(v) for v in row] for row in expected]


@pytest.mark.parametrize("name", MASKED_MODELS)
def test_padding_does_not_change_the_output(name: str) -> None:
    alphabet = 4 if name == "sequence_transformer" else 20
    torch.manual_seed(0)
    kwargs = {"layers": 2} if name == "protein_lstm" else {}
    model = build_model(name, in_channels=alphabet, out_dim=2, **kwargs).eval()
    lengths = [37, 50, 65, 83]  # not multiples of the transformer's patch of 4
    seqs = [one_hot(1, alphabet, n, seed=n)[0] for n in lengths]
    seqs[1][:, 20] = 0.0  # an interior all-zero column (N / X) is a position, not padding
    padded = torch.zeros(len(seqs), alphabet, 100)
    for i, s in enumerate(seqs):
        padded[i, :, : s.shape[1]] = s
    with torch.no_grad():
        batch = model(padded)
        alone = torch.cat([model(s[None]) for s in seqs])
        empty = model(torch.zeros(1, alphabet, 100))  # all padding: finite, not NaN
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    assert (alone[0] - alone[1]).abs().max() > 1e-3  # different sequences, different outputs
    assert torch.isfinite(empty).all()


def test_padding_changes_unmasked_dna_cnn() -> None:
    # deepsea does not mask (fixed-length windows, as published): the test above would catch it
    torch.manual_seed(0)
    model = sequence.deepsea(width=32).eval()
    x = one_hot(1, 4, 150)
    with torch.no_grad():
        assert not torch.allclose(model(x), model(F.pad(x, (0, 50))), atol=1e-5)


def test_reverse_complement_of_one_hot_dna() -> None:
    x = encode_dna(["AACGT", "ANG..", "ACGTA"])  # "." = padding, N = interior zero column
    rc = sequence.reverse_complement(x)
    assert torch.equal(rc, encode_dna(["ACGTT", "CNT..", "TACGT"]))  # padding stays right
    assert torch.equal(sequence.reverse_complement(rc), x)
    assert torch.equal(rc[[0, 2]], x[[0, 2]].flip(1).flip(2))  # unpadded: the plain flip


@pytest.mark.parametrize(
    ("name", "size"),
    [("deepsea", {"width": 32}), ("danq", {"filters": 32, "hidden": 32}),
     ("sequence_transformer", {"dim": 32, "depth": 2})],
)  # fmt: skip
def test_strand_averaged_is_reverse_complement_invariant(name: str, size: dict) -> None:
    torch.manual_seed(0)
    base = build_model(name, in_channels=4, out_dim=2, **size).eval()
    model = sequence.strand_averaged(base)
    x = one_hot(3, 4, 200)
    rc = sequence.reverse_complement(x)
    with torch.no_grad():
        assert torch.equal(model(x), model(rc))
        assert not torch.allclose(base(x), base(rc))  # the wrapped model alone is not
    with pytest.raises(ValueError, match="DNA"):
        model(one_hot(1, 20, 200))


def test_strand_averaged_padded_batch_matches_unpadded() -> None:
    torch.manual_seed(0)
    model = sequence.strand_averaged(sequence.sequence_transformer(dim=32, depth=2)).eval()
    seqs = [one_hot(1, 4, n, seed=n) for n in (61, 90)]
    padded = torch.cat([F.pad(s, (0, 100 - s.shape[-1])) for s in seqs])
    with torch.no_grad():
        alone = torch.cat([model(s) for s in seqs])
        torch.testing.assert_close(model(padded), alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["deepsea", "basset", "sequence_transformer", "protein_cnn"])
def test_traceable_by_torch_compile(name: str) -> None:
    # the eager backend traces with Dynamo (no code generation), which is what graph breaks and
    # data-dependent control flow would trip; fullgraph=True makes any break an error. Not
    # danq / protein_lstm: Dynamo does not trace nn.LSTM (torch 2.13), so they compile with a
    # graph break at each LSTM call.
    torch._dynamo.reset()
    alphabet = 20 if name in PROTEIN_MODELS else 4
    model = build_model(name, in_channels=alphabet, out_dim=2).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = one_hot(2, alphabet, 120)
    x[1, :, 90:] = 0.0  # padding exercises the masks
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def planted_motif_data(
    n: int, length: int, motif: str, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random DNA with the human genome's base composition (~41% GC), the motif planted at a
    random position in half of the sequences; label = the motif occurs (on the given strand)."""
    bases = rng.choice(list("ACGT"), size=(n, length), p=[0.295, 0.205, 0.205, 0.295])
    starts = rng.integers(0, length - len(motif) + 1, n)
    for i in np.flatnonzero(rng.random(n) < 0.5):
        bases[i, starts[i] : starts[i] + len(motif)] = list(motif)
    # labelled from the sequence, so a chance occurrence in an unplanted one counts too
    labels = np.array([motif in "".join(row) for row in bases], dtype=np.float32)
    index = np.searchsorted(np.array(list("ACGT")), bases)
    x = np.eye(4, dtype=np.float32)[index].transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels)


def test_deepsea_learns_a_planted_motif() -> None:
    rng = np.random.default_rng(0)
    x_train, y_train = planted_motif_data(4000, 100, "ATGCAAAT", rng)
    x_test, y_test = planted_motif_data(500, 100, "ATGCAAAT", rng)
    assert 0.4 < y_test.mean() < 0.6
    torch.manual_seed(0)
    model = sequence.deepsea(width=32, length=100, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    # 500 steps (3 s): over seeds 0-11 it passes 0.9 after 100-300 steps, then stays above 0.99
    for _ in range(500):
        batch = torch.randint(0, len(x_train), (32,))
        loss = F.binary_cross_entropy_with_logits(model(x_train[batch])[:, 0], y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = ((model(x_test)[:, 0] > 0).float() == y_test).float().mean().item()
    assert accuracy > 0.9
