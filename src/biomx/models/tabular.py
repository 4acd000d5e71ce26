"""Models for tables (one row per patient): an MLP with categorical embeddings, and the
FT-Transformer (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data").

Both read one float matrix (N, n_numeric + len(cardinalities)): standardised numbers and 0/1
missingness indicators first, then one integer-valued column per categorical feature holding
a level index in [0, cardinality) (0 and 1 are the encoder's unknown and missing levels).

Both split into `embed(x) -> z`, a continuous representation made of one block per input
column (`feature_slices`), and `head(z)`, so attributions (integrated gradients) can be taken
in that continuous space and summed per input column, categoricals included.

Dropout is always an `nn.Dropout` module (MC dropout switches exactly those to train mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biomx.models.bounds import Between, Blocks, OutDim, Rate, Units

Columns = Annotated[int, Between(0, 100_000)]  # continuous input columns (set from the data)
Levels = Annotated[Sequence[int], Between(2, 1_000_000)]  # levels of each categorical column
EmbeddingDim = Annotated[int, Between(0, 1024)]

# Input sizes used only to count parameters in `biomx models`: 30 numbers, 2 categoricals.
LISTING_INPUTS = {"n_numeric": 30, "cardinalities": [4, 6]}


def listing_inputs(in_channels: int) -> dict[str, object]:
    return dict(LISTING_INPUTS)


def _check(n_numeric: int, cardinalities: Sequence[int]) -> list[int]:
    cards = [int(c) for c in cardinalities]
    if n_numeric + len(cards) == 0:
        raise ValueError("a tabular model needs at least one feature column")
    if any(c < 2 for c in cards):
        raise ValueError(f"each categorical needs at least 2 levels; got {cards}")
    return cards


def _codes(x: Tensor, n_numeric: int, cards: list[int]) -> Tensor:
    """The categorical columns as long indices, clamped into range (a corrupt code must not index
    out of bounds)."""
    codes = x[:, n_numeric:].round().long()
    return torch.minimum(codes.clamp(min=0), codes.new_tensor(cards) - 1)


class TabularMLP(nn.Module):
    """Numbers and indicators as they are, categoricals as learned embeddings (or one-hot with
    embedding_dim 0), concatenated, then `depth` blocks of linear, norm, ReLU, dropout."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], out_dim: int, width: int = 256,
                 depth: int = 3, embedding_dim: int = 8, dropout: float = 0.1,
                 norm: Literal["batch", "layer", "none"] = "batch"):  # fmt: skip
        super().__init__()
        self.n_numeric, self.cards = n_numeric, _check(n_numeric, cardinalities)
        self.embedding_dim = embedding_dim
        self.embeddings = nn.ModuleList(nn.Embedding(c, embedding_dim) for c in self.cards) if embedding_dim else None
        sizes = [1] * n_numeric + [embedding_dim or c for c in self.cards]
        starts = torch.tensor([0, *sizes]).cumsum(0).tolist()
        self.feature_slices = [(starts[k], starts[k + 1]) for k in range(len(sizes))]
        layers: list[nn.Module] = []
        size = starts[-1]
        for _ in range(depth):
            layers.append(nn.Linear(size, width))
            if norm != "none":
                layers.append(nn.BatchNorm1d(width) if norm == "batch" else nn.LayerNorm(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size = width
        layers.append(nn.Linear(size, out_dim))
        self.mlp = nn.Sequential(*layers)

    def embed(self, x: Tensor) -> Tensor:
        parts = [x[:, : self.n_numeric]]
        codes = _codes(x, self.n_numeric, self.cards)
        for k, card in enumerate(self.cards):
            if self.embeddings is None:
                parts.append(F.one_hot(codes[:, k], card).to(x.dtype))
            else:
                parts.append(self.embeddings[k](codes[:, k]))
        return torch.cat(parts, dim=1)

    def head(self, z: Tensor) -> Tensor:
        return self.mlp(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


class FTTransformer(nn.Module):
    """Feature Tokenizer + Transformer: each column becomes a d_token vector (a number x_j as
    x_j * W_j + b_j, a categorical as its level's embedding + b_j), a CLS token is appended, a few
    pre-norm transformer layers mix them, and the output is read from the CLS token."""

    def __init__(self, n_numeric: int, cardinalities: Sequence[int], out_dim: int, d_token: int = 64,
                 depth: int = 3, heads: int = 8, dropout: float = 0.1, attention_dropout: float = 0.2,
                 ffn_factor: float = 4 / 3):  # fmt: skip
        super().__init__()
        self.n_numeric, self.cards = n_numeric, _check(n_numeric, cardinalities)
        if d_token % heads:
            raise ValueError(f"d_token ({d_token}) must be a multiple of heads ({heads})")
        self.d_token = d_token
        n_features = n_numeric + len(self.cards)
        self.weight = nn.Parameter(torch.empty(n_numeric, d_token))
        self.bias = nn.Parameter(torch.empty(n_features, d_token))
        offsets = torch.tensor([0, *self.cards[:-1]]).cumsum(0) if self.cards else torch.zeros(0)
        self.register_buffer("offsets", offsets.long(), persistent=False)
        self.levels = nn.Embedding(max(sum(self.cards), 1), d_token)
        self.cls = nn.Parameter(torch.empty(1, 1, d_token))
        for p in (self.weight, self.bias, self.cls, self.levels.weight):  # the paper's initialisation
            nn.init.uniform_(p, -d_token**-0.5, d_token**-0.5)
        layer = nn.TransformerEncoderLayer(d_token, heads, dim_feedforward=max(1, int(d_token * ffn_factor)),
                                           dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=True)  # fmt: skip
        layer.self_attn.dropout = attention_dropout  # attention weights' own dropout rate
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d_token), nn.ReLU(), nn.Linear(d_token, out_dim))
        self.feature_slices = [(k * d_token, (k + 1) * d_token) for k in range(n_features)]

    def embed(self, x: Tensor) -> Tensor:
        """The feature tokens, flattened: (N, n_features * d_token)."""
        tokens = [x[:, : self.n_numeric, None] * self.weight]
        if self.cards:
            codes = _codes(x, self.n_numeric, self.cards) + self.offsets
            tokens.append(self.levels(codes))
        return (torch.cat(tokens, dim=1) + self.bias).flatten(1)

    def head(self, z: Tensor) -> Tensor:
        tokens = z.reshape(len(z), -1, self.d_token)
        tokens = torch.cat([tokens, self.cls.expand(len(z), -1, -1)], dim=1)
        return self.out(self.encoder(tokens)[:, -1])

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def tabular_mlp(n_numeric: Columns, cardinalities: Levels, out_dim: OutDim, width: Units = 256,
                depth: Blocks = 3, embedding_dim: EmbeddingDim = 8, dropout: Rate = 0.1,
                norm: Literal["batch", "layer", "none"] = "batch") -> TabularMLP:  # fmt: skip
    """MLP with categorical embeddings (embedding_dim 0: one-hot), dropout and batch/layer norm."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")
    if norm not in ("batch", "layer", "none"):
        raise ValueError(f"norm must be batch, layer or none; got {norm!r}")
    return TabularMLP(n_numeric, cardinalities, out_dim, width, depth, embedding_dim, dropout, norm)


def ft_transformer(n_numeric: Columns, cardinalities: Levels, out_dim: OutDim,
                   d_token: Annotated[int, Between(8, 1024)] = 64, depth: Annotated[int, Between(1, 12)] = 3,
                   heads: Annotated[int, Between(1, 32)] = 8, dropout: Rate = 0.1,
                   attention_dropout: Rate = 0.2) -> FTTransformer:  # fmt: skip
    """FT-Transformer (Gorishniy 2021): per-feature tokens, a CLS token, pre-norm layers."""
    for name, rate in (("dropout", dropout), ("attention_dropout", attention_dropout)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {rate}")
    return FTTransformer(n_numeric, cardinalities, out_dim, d_token, depth, heads, dropout, attention_dropout)
