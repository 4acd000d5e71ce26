"""Models for patient histories: a GRU/LSTM over visits (packed sequences), and a small
transformer over visits (padding mask, time encoding); both join the static covariates to the
sequence summary.

Input (one float matrix, see modalities/history/encode.py): the static covariates as the tabular
models read them (n_numeric standardised numbers and indicators, then one level index per
categorical), then max_visits blocks of 2 * n_variables + 3: values, measured indicators, time
since the first visit, gap since the previous visit, 1 for a real visit (0 = padding). Visits
are left-aligned, so a patient's length is its count of real visits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from biomx.models.bounds import Between, OutDim, Rate

Columns = Annotated[int, Between(0, 100_000)]
Levels = Annotated[Sequence[int], Between(2, 1_000_000)]
Variables = Annotated[int, Between(1, 10_000)]
Visits = Annotated[int, Between(1, 10_000)]
Width = Annotated[int, Between(8, 1024)]

LISTING_INPUTS = {"n_numeric": 4, "cardinalities": [3, 3], "n_variables": 5, "max_visits": 20}


def listing_inputs(in_channels: int) -> dict[str, object]:
    return dict(LISTING_INPUTS)


class _Static(nn.Module):
    """The covariates: numbers as they are, categoricals as embeddings, then one linear layer."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], width: int) -> None:
        super().__init__()
        self.n_numeric, self.cards = n_numeric, [int(c) for c in cardinalities]
        self.embeddings = nn.ModuleList(nn.Embedding(c, 8) for c in self.cards)
        size = n_numeric + 8 * len(self.cards)
        self.out = nn.Sequential(nn.Linear(size, width), nn.ReLU()) if size else None
        self.width = width if size else 0

    def forward(self, x: Tensor) -> Tensor:
        if self.out is None:
            return x.new_zeros(len(x), 0)
        parts = [x[:, : self.n_numeric]]
        if self.cards:
            codes = x[:, self.n_numeric :].round().long()
            codes = torch.minimum(codes.clamp(min=0), codes.new_tensor(self.cards) - 1)  # corrupt codes stay in range
            parts += [emb(codes[:, k]) for k, emb in enumerate(self.embeddings)]
        return self.out(torch.cat(parts, dim=1))


class _HistoryModel(nn.Module):
    """Splits the input into covariates and visits; subclasses summarise the visits."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], n_variables: int, max_visits: int,
                 out_dim: int, width: int, dropout: float) -> None:  # fmt: skip
        super().__init__()
        self.n_static = n_numeric + len(cardinalities)
        self.step, self.max_visits = 2 * n_variables + 3, max_visits
        self.static = _Static(n_numeric, cardinalities, width)
        self.head = nn.Sequential(nn.Linear(width + self.static.width, width), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(width, out_dim))  # fmt: skip

    def visits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(visits (N, T, step), real-visit mask (N, T))."""
        seq = x[:, self.n_static :].reshape(len(x), self.max_visits, self.step)
        return seq, seq[..., -1] > 0.5

    def summary(self, seq: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        seq, mask = self.visits(x)
        return self.head(torch.cat([self.summary(seq, mask), self.static(x[:, : self.n_static])], dim=1))


class HistoryRNN(_HistoryModel):
    """A GRU or LSTM over the real visits (packed: padding never enters the recurrence); the last
    hidden state of the top layer summarises the history."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], n_variables: int, max_visits: int,
                 out_dim: int, width: int, depth: int, cell: str, dropout: float) -> None:  # fmt: skip
        super().__init__(n_numeric, cardinalities, n_variables, max_visits, out_dim, width, dropout)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(self.step, width, num_layers=depth, batch_first=True, dropout=dropout if depth > 1 else 0.0)

    def summary(self, seq: Tensor, mask: Tensor) -> Tensor:
        # A patient with no visit (only possible at predict) reads one all-zero step.
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        _, hidden = self.rnn(packed)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        return h[-1]


class HistoryTransformer(_HistoryModel):
    """Visits as tokens (a linear projection plus a sinusoidal encoding of the visit time), a
    pre-norm transformer encoder with the padding masked out, the mean of the real visits."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], n_variables: int, max_visits: int,
                 out_dim: int, width: int, depth: int, heads: int, dropout: float) -> None:  # fmt: skip
        super().__init__(n_numeric, cardinalities, n_variables, max_visits, out_dim, width, dropout)
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        self.project = nn.Linear(self.step, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        freqs = torch.exp(torch.arange(0, width, 2).float() * (-math.log(1000.0) / width))
        self.register_buffer("freqs", freqs, persistent=False)

    def time_encoding(self, t: Tensor) -> Tensor:
        angles = t[..., None] * self.freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., : self.project.out_features]

    def summary(self, seq: Tensor, mask: Tensor) -> Tensor:
        mask = mask.clone()
        mask[:, 0] = True  # an empty history attends to its one zero step rather than to nothing
        tokens = self.project(seq) + self.time_encoding(seq[..., -3])
        z = self.encoder(tokens, src_key_padding_mask=~mask)
        weights = mask.float().unsqueeze(-1)
        return (z * weights).sum(1) / weights.sum(1)


def _check_rate(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")


def history_gru(n_numeric: Columns, cardinalities: Levels, n_variables: Variables, max_visits: Visits,
                out_dim: OutDim, width: Width = 64, depth: Annotated[int, Between(1, 4)] = 1,
                cell: Literal["gru", "lstm"] = "gru", dropout: Rate = 0.1) -> HistoryRNN:  # fmt: skip
    """GRU (or LSTM: cell lstm) over the visits, joined to the static covariates."""
    _check_rate(dropout)
    if cell not in ("gru", "lstm"):
        raise ValueError(f"cell must be gru or lstm; got {cell!r}")
    return HistoryRNN(n_numeric, cardinalities, n_variables, max_visits, out_dim, width, depth, cell, dropout)


def history_transformer(n_numeric: Columns, cardinalities: Levels, n_variables: Variables, max_visits: Visits,
                        out_dim: OutDim, width: Width = 64, depth: Annotated[int, Between(1, 6)] = 2,
                        heads: Annotated[int, Between(1, 16)] = 4, dropout: Rate = 0.1) -> HistoryTransformer:  # fmt: skip
    """A small transformer over the visits (time encoding, padding mask), joined to the covariates."""
    _check_rate(dropout)
    return HistoryTransformer(n_numeric, cardinalities, n_variables, max_visits, out_dim, width, depth, heads, dropout)
