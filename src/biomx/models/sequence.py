"""1D sequence classifiers for genomics and proteins: DeepSEA, Basset, DanQ, a small transformer,
and a CNN and a BiLSTM for protein sequences.

Every model takes one-hot sequences `x` of shape (B, A, L), float, where A is the number of
symbols (4 for DNA in ACGT order, 20 for protein; passed as `in_channels`), and returns logits
of shape (B, out_dim). All of them accept any length L >= 50 (see each builder for its exact
minimum): the published models end in a dense layer sized for one input length, which here is
replaced by adaptive or global pooling.

Padding convention (protein_cnn, protein_lstm, sequence_transformer): sequences of different
lengths are batched left-aligned, with all-zero one-hot columns appended at the end. A sequence's
length is taken as the position of its last non-zero column, so an all-zero column *inside* a
sequence (an N base or an X residue encoded as zeros) is kept as a position, not dropped. These
three models give the same output for a sequence whether or not it is padded. The DNA CNNs
(deepsea, basset, danq) do not mask: like the originals they expect fixed-length windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biomx.models.bounds import Between, Blocks, InChannels, OutDim, Rate, Units


def _length_mask(x: Tensor) -> Tensor:
    """(B, L) bool, True at positions before the sequence's end: the last non-zero column.

    Trailing all-zero columns are padding. Computed with tensor ops only (no Python loop over the
    batch) so the models stay traceable by torch.compile.
    """
    nonzero = x.ne(0).any(1)  # (B, L)
    positions = torch.arange(1, x.shape[-1] + 1, device=x.device)
    lengths = (nonzero * positions).amax(1)  # 1 + index of the last non-zero column, 0 if none
    return positions[None, :] <= lengths[:, None]


def _reverse_index(mask: Tensor) -> Tensor:
    """(B, L) index that reverses positions [0, length) of each row and keeps the padding after.

    `mask` is a `_length_mask`. Gathering with it twice is the identity, so the same index also
    maps reversed outputs back.
    """
    lengths = mask.sum(1, keepdim=True)  # the mask is a prefix
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]
    return torch.where(mask, lengths - 1 - positions, positions)


def _masked_max(h: Tensor, mask: Tensor) -> Tensor:
    """Max over the last axis of `h` (B, C, L) at positions where `mask` (B, L) is True.

    Padded positions are set to -inf so they never win; a row with no valid position at all gives
    0 instead of -inf so the logits stay finite.
    """
    pooled = h.masked_fill(~mask[:, None, :], float("-inf")).amax(-1)
    return torch.where(mask.any(-1, keepdim=True), pooled, torch.zeros_like(pooled))


def _masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over the last axis of `h` (B, C, L) at positions where `mask` (B, L) is True."""
    weights = mask[:, None, :].to(h.dtype)
    return (h * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def deepsea(
    in_channels: InChannels = 4,
    out_dim: OutDim = 1,
    length: Annotated[int, Between(16, 10_000)] = 200,  # the dense layer grows with it
    width: Annotated[int, Between(1, 1024)] = 320,
    dropout: Rate = 0.2,
) -> nn.Module:
    """DeepSEA (Zhou & Troyanskaya 2015, Nature Methods 12:931): chromatin effects of variants.

    Three convolutions (kernel 8; 320, 480 and 960 channels at width=320), each with ReLU, the
    first two followed by max-pooling 4; then a dense layer (925 units at width=320) and the
    output layer. All sizes scale with `width / 320`.

    Args:
        length: the nominal input length in bp. The original flattens the conv output of a
            1000 bp window into the dense layer; here adaptive max-pooling first resamples the
            conv output to the number of positions a `length` bp input gives (length // 16), so
            at the nominal length it is the original flatten + dense, and any other length
            (>= 16 bp) also works.

    Deviations: convolutions are zero-padded ("same") rather than unpadded, so short inputs
    survive three convolutions; one `dropout` rate is used everywhere (the paper: 0.2 after the
    pools, 0.5 before the dense layer); the paper's L1/L2 and max-norm penalties are left to the
    optimiser's weight decay.
    """
    if length < 16:
        raise ValueError(f"length must be >= 16 (two max-pools of 4); got {length}")
    c1, c2, c3 = width, width * 3 // 2, width * 3
    hidden = max(1, width * 925 // 320)
    bins = length // 4 // 4  # positions left after the two max-pools (floor, as nn.MaxPool1d)
    # "same" padding for the even kernel 8 is 3 left + 4 right; written out because
    # Conv1d(padding="same") warns about even kernels
    return nn.Sequential(
        nn.ConstantPad1d((3, 4), 0.0),
        nn.Conv1d(in_channels, c1, 8),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(4),
        nn.Dropout(dropout),
        nn.ConstantPad1d((3, 4), 0.0),
        nn.Conv1d(c1, c2, 8),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(4),
        nn.Dropout(dropout),
        nn.ConstantPad1d((3, 4), 0.0),
        nn.Conv1d(c2, c3, 8),
        nn.ReLU(inplace=True),
        nn.AdaptiveMaxPool1d(bins),
        nn.Dropout(dropout),
        nn.Flatten(),
        nn.Linear(c3 * bins, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out_dim),
    )


def basset(in_channels: InChannels = 4, out_dim: OutDim = 1, dropout: Rate = 0.3) -> nn.Module:
    """Basset (Kelley, Snoek & Rinn 2016, Genome Research 26:990): chromatin accessibility.

    conv 300x19 -> BN -> ReLU -> max-pool 3; conv 200x11 -> BN -> ReLU -> max-pool 4;
    conv 200x7 -> BN -> ReLU -> max-pool 4; two dense layers of 1000 units (BN, ReLU, dropout);
    output layer. Inputs of any length >= 48 bp (the three pools divide the length by 48).

    Deviations: convolutions are zero-padded ("same") so short inputs work; the original
    flattens the 10 positions left of a 600 bp input into 2000 features, here a global max over
    positions gives 200 features for any length (about 2.2M parameters instead of 4.1M).
    """
    return nn.Sequential(
        # bias=False where BatchNorm follows: its shift makes a conv bias redundant
        nn.Conv1d(in_channels, 300, 19, padding="same", bias=False),
        nn.BatchNorm1d(300),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(3),
        nn.Conv1d(300, 200, 11, padding="same", bias=False),
        nn.BatchNorm1d(200),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(4),
        nn.Conv1d(200, 200, 7, padding="same", bias=False),
        nn.BatchNorm1d(200),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(4),
        nn.AdaptiveMaxPool1d(1),
        nn.Flatten(),
        nn.Linear(200, 1000, bias=False),
        nn.BatchNorm1d(1000),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1000, 1000, bias=False),
        nn.BatchNorm1d(1000),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1000, out_dim),
    )


class DanQ(nn.Module):
    """DanQ (Quang & Xie 2016, Nucleic Acids Research 44:e107): a CNN for motifs, then a BiLSTM
    for the grammar between them.

    conv `filters` x 26 -> ReLU -> max-pool 13 -> dropout -> BiLSTM (`hidden` per direction) ->
    global max over positions -> dropout -> dense (925 units at hidden=320) -> ReLU -> output.
    Inputs of any length >= 13 bp.

    Deviations: the convolution is zero-padded ("same"); the original flattens the 75 BiLSTM
    outputs of a 1000 bp input into the dense layer (44M of its 47M parameters), here a global
    max over positions makes it length-free; one `dropout` rate (the paper: 0.2, then 0.5).
    """

    def __init__(
        self, in_channels: int, out_dim: int, filters: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, 26)  # "same"-padded in forward
        self.pool = nn.MaxPool1d(13)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(filters, hidden, batch_first=True, bidirectional=True)
        dense = max(1, hidden * 925 // 320)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, dense), nn.ReLU(inplace=True), nn.Linear(dense, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        # "same" padding for the even kernel 26 (12 left + 13 right), written out because
        # Conv1d(padding="same") warns about even kernels
        h = self.dropout(self.pool(F.relu(self.conv(F.pad(x, (12, 13))))))  # (B, filters, L // 13)
        h, _ = self.lstm(h.transpose(1, 2))  # (B, L // 13, 2 * hidden)
        return self.head(self.dropout(h.amax(1)))


def danq(
    in_channels: InChannels = 4,
    out_dim: OutDim = 1,
    filters: Units = 320,
    hidden: Units = 320,
    dropout: Rate = 0.2,
) -> nn.Module:
    """DanQ: conv + max-pool + BiLSTM + dense (see `DanQ`)."""
    return DanQ(in_channels, out_dim, filters, hidden, dropout)


class SequenceTransformer(nn.Module):
    """A small transformer encoder for DNA or protein sequences (pre-norm, GELU; Vaswani et al.
    2017, with the patch embedding of Dosovitskiy et al. 2021 applied to 1D sequences).

    A conv stem with kernel and stride `patch` turns every `patch` positions into one token of
    `dim` channels; learned position embeddings are added; `depth` pre-norm encoder layers;
    mean over the tokens that are not padding; a linear head.

    Padding: a token is padding when its whole patch lies after the sequence's end (trailing
    all-zero columns, see the module docstring). Padding tokens are excluded as attention keys
    and from the mean, so a padded sequence gives the output of the unpadded one. The input is
    zero-padded to a multiple of `patch`, so the last, partial token is kept.
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        dim: int,
        depth: int,
        heads: int,
        patch: int,
        dropout: float,
        max_length: int,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.patch = patch
        self.stem = nn.Conv1d(in_channels, dim, patch, stride=patch)
        self.positions = nn.Parameter(torch.zeros(1, math.ceil(max_length / patch), dim))
        nn.init.normal_(self.positions, std=0.02)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # nested tensors are only a speed path for post-norm layers; off avoids its warning
        self.encoder = nn.TransformerEncoder(
            layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        mask = _length_mask(x)  # (B, L), before padding x to whole patches
        x = F.pad(x, (0, -x.shape[-1] % self.patch))  # zeros, like any other padding
        tokens = self.stem(x).transpose(1, 2)  # (B, T, dim)
        n_tokens = tokens.shape[1]
        if n_tokens > self.positions.shape[1]:  # a shape check, fine for torch.compile
            raise ValueError(
                f"sequence of {x.shape[-1]} positions is longer than max_length "
                f"({self.positions.shape[1] * self.patch}); build with a larger max_length"
            )
        # token t covers positions [t * patch, (t + 1) * patch): valid if it starts inside
        starts = torch.arange(n_tokens, device=x.device) * self.patch
        keep = mask.sum(1, keepdim=True) > starts[None, :]  # (B, T)
        # token 0 always attends, so an all-padding row gets finite (if meaningless) logits
        # instead of the NaN of a softmax over no keys; a real sequence always keeps token 0
        keep = keep | (starts == 0)[None, :]
        h = self.dropout(tokens + self.positions[:, :n_tokens])
        h = self.encoder(h, src_key_padding_mask=~keep)  # True = ignore, as PyTorch expects
        return self.head(_masked_mean(h.transpose(1, 2), keep))


def sequence_transformer(
    in_channels: InChannels = 4,
    out_dim: OutDim = 1,
    dim: Units = 128,
    depth: Blocks = 4,
    heads: Annotated[int, Between(1, 256)] = 4,
    patch: Annotated[int, Between(1, 1024)] = 4,
    dropout: Rate = 0.1,
    max_length: Annotated[int, Between(1, 1_000_000)] = 4096,
) -> nn.Module:
    """A small pre-norm transformer encoder over `patch`-position tokens (see
    `SequenceTransformer`). Inputs of any length up to `max_length` positions."""
    return SequenceTransformer(in_channels, out_dim, dim, depth, heads, patch, dropout, max_length)


class ProteinCNN(nn.Module):
    """Multi-kernel 1D CNN with global max pooling for protein sequences, as in DeepGO
    (Kulmanov, Khan & Hoehndorf 2018, Bioinformatics 34:660) and CNNs for peptide
    classification (e.g. Veltri, Kamath & Shehu 2018, Bioinformatics 34:2740).

    One convolution of `width` filters per kernel size, all reading the one-hot residues in
    parallel (motifs of different lengths); ReLU; max over the sequence's valid positions;
    concatenated; dropout; linear head. Padding positions never win the max, so padded and
    unpadded sequences give the same output.
    """

    def __init__(
        self, in_channels: int, out_dim: int, width: int, kernels: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        # zero "same" padding: a valid position near the end sees zeros whether the sequence
        # was padded in the batch or not
        self.convs = nn.ModuleList(
            nn.Conv1d(in_channels, width, k, padding="same") for k in kernels
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width * len(kernels), out_dim)

    def forward(self, x: Tensor) -> Tensor:
        mask = _length_mask(x)
        pooled = [_masked_max(F.relu(conv(x)), mask) for conv in self.convs]
        return self.head(self.dropout(torch.cat(pooled, 1)))


def protein_cnn(
    in_channels: InChannels = 20,
    out_dim: OutDim = 1,
    width: Units = 128,
    kernels: Annotated[Sequence[int], Between(1, 1024)] = (3, 5, 9),
    dropout: Rate = 0.2,
) -> nn.Module:
    """Multi-kernel CNN with masked global max pooling for proteins (see `ProteinCNN`)."""
    return ProteinCNN(in_channels, out_dim, width, tuple(kernels), dropout)


class ProteinLSTM(nn.Module):
    """Bidirectional LSTM (Hochreiter & Schmidhuber 1997; Schuster & Paliwal 1997) over one-hot
    residues, with mean and max pooling over the valid positions and a linear head.

    Padding: a plain bidirectional nn.LSTM would run its backward direction from the end of the
    padding, so a padded sequence would get different outputs. Here each layer is two
    unidirectional LSTMs; the backward one reads every sequence reversed *within its own
    length* (padding stays at the end), so its outputs do not depend on the padding either.
    This is a gather with a per-sequence index, not pack_padded_sequence, so there is no
    data-dependent shape and the model stays traceable.
    """

    def __init__(
        self, in_channels: int, out_dim: int, hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        sizes = [in_channels] + [2 * hidden] * (layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.backward_lstms = nn.ModuleList(nn.LSTM(s, hidden, batch_first=True) for s in sizes)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(4 * hidden, out_dim)  # mean and max of both directions

    def forward(self, x: Tensor) -> Tensor:
        mask = _length_mask(x)  # (B, L)
        reverse = _reverse_index(mask)[..., None]  # (B, L, 1); its own inverse
        h = x.transpose(1, 2)  # (B, L, A)
        for i, (fwd, bwd) in enumerate(zip(self.forward_lstms, self.backward_lstms, strict=True)):
            if i > 0:  # between layers, as nn.LSTM's own dropout argument does
                h = self.dropout(h)
            out_fwd, _ = fwd(h)
            out_bwd, _ = bwd(h.gather(1, reverse.expand_as(h)))
            out_bwd = out_bwd.gather(1, reverse.expand_as(out_bwd))
            h = torch.cat([out_fwd, out_bwd], -1)  # (B, L, 2 * hidden)
        h = h.transpose(1, 2)
        pooled = torch.cat([_masked_mean(h, mask), _masked_max(h, mask)], 1)
        return self.head(self.dropout(pooled))


def protein_lstm(
    in_channels: InChannels = 20,
    out_dim: OutDim = 1,
    hidden: Units = 128,
    layers: Blocks = 1,
    dropout: Rate = 0.2,
) -> nn.Module:
    """BiLSTM with masked mean + max pooling for proteins (see `ProteinLSTM`)."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1; got {layers}")
    return ProteinLSTM(in_channels, out_dim, hidden, layers, dropout)


def reverse_complement(x: Tensor) -> Tensor:
    """Reverse complement of one-hot DNA (B, 4, L) in ACGT order; padding stays at the end.

    Complementing swaps A<->T and C<->G, which in ACGT order is reversing the channel axis. For
    an unpadded batch this is `x.flip(1).flip(2)`; a right-padded sequence is reversed within
    its own length (see the module docstring), as a plain flip would move its padding to the
    front, where the masked models would read it as sequence.
    """
    index = _reverse_index(_length_mask(x))[:, None, :].expand_as(x)
    return x.flip(1).gather(2, index)


class StrandAveraged(nn.Module):
    """Averages a DNA model's output over both strands: (model(x) + model(rc(x))) / 2.

    DNA is double-stranded and a regulatory element works on either strand, so the prediction
    should not depend on which strand the window was read from. DeepSEA (Zhou & Troyanskaya
    2015) averages its forward and reverse-complement predictions this way at inference.
    The two strands go through the model in separate calls rather than one concatenated batch,
    so that the result is exactly invariant to reverse-complementing the input (with
    `reverse_complement`, which keeps right padding on the right).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 4:
            raise ValueError(f"expected one-hot DNA (B, 4, L), ACGT order; got {tuple(x.shape)}")
        return (self.model(x) + self.model(reverse_complement(x))) / 2


def strand_averaged(model: nn.Module) -> nn.Module:
    """Wrap a DNA model so it predicts the average over both strands (see `StrandAveraged`)."""
    return StrandAveraged(model)
