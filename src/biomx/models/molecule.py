"""Molecular property models: D-MPNN (chemprop), GIN with bond features, AttentiveFP, and an
MLP on fingerprints / descriptors.

Every model takes one graph batch (a `torch_geometric.data.Data`, see
`biomx.modalities.molecule.graphs.graph_batch`) and returns (num_molecules, out_dim):
- `x` (atoms, atom_dim), `edge_index` (2, edges) with global atom indices, `edge_attr`
  (edges, bond_dim), `batch` (atoms,) the molecule of each atom;
- `features` (num_molecules, feature_dim) molecule-level vectors, read when feature_dim > 0;
- `num_molecules` a python int. Pooling sizes come from it, never from `batch.max()`, which
  would sync the GPU and miss molecules at the end of the batch that have no atoms.
Each bond is stored as two adjacent directed edges (2k: u->v, 2k+1: v->u), so the reverse of
edge e is e ^ 1; D-MPNN relies on this.

Dropout is always an `nn.Dropout` module (MC dropout at inference switches exactly those to
train mode); with dropout 0 no dropout module is built, so MC dropout can tell there is none.
The graph models are pure torch plus PyG layers; no torch_scatter.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biomx.models.bounds import Between, Blocks, OutDim, Rate, Units
from biomx.models.solvers import features_of

# Atom, bond and molecule-level feature sizes (set from the featuriser; 0 = none)
Features = Annotated[int, Between(0, 1_000_000)]

if TYPE_CHECKING:
    from torch_geometric.data import Data

AGGREGATIONS = ("mean", "sum", "norm")
CHEMPROP_AGGREGATION_NORM = 100.0  # chemprop's `norm` aggregation: sum over atoms / 100

# Input sizes used only to count parameters in `biomx models`: chemprop's atom and bond feature
# sizes and a 2048-bit Morgan fingerprint. A run passes the sizes of its own featuriser.
LISTING_ATOM_DIM = 133
LISTING_BOND_DIM = 14
LISTING_FEATURE_DIM = 2048
VECTOR_MODELS = {"fingerprint_mlp", "svm", "random_forest", "lightgbm"}  # models that read only `features`
KERNEL_MODELS = {"svm"}  # vector models that also read where the fingerprint columns end


def listing_inputs(name: str) -> dict[str, int]:
    """Input sizes for building model `name` in `biomx models` (parameter counts only)."""
    if name in KERNEL_MODELS:
        return {"feature_dim": LISTING_FEATURE_DIM, "fingerprint_dim": LISTING_FEATURE_DIM}
    if name in VECTOR_MODELS:
        return {"feature_dim": LISTING_FEATURE_DIM}
    return {"atom_dim": LISTING_ATOM_DIM, "bond_dim": LISTING_BOND_DIM}


# ---------------------------------------------------------------------------------- helpers


def _dropout(p: float) -> nn.Module:
    """nn.Dropout, or nothing at p == 0 (so MC dropout finds no dropout layer to sample)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {p}")
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _check_dims(name: str, atom_dim: int, bond_dim: int) -> None:
    if atom_dim <= 0 or bond_dim <= 0:
        raise ValueError(
            f"{name} needs atom_dim > 0 and bond_dim > 0 (set from the featuriser); "
            f"got atom_dim={atom_dim}, bond_dim={bond_dim}"
        )


def _check_choice(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")


def ffn_head(in_dim: int, hidden: int, layers: int, out_dim: int, dropout: float) -> nn.Sequential:
    """chemprop's FFN: (dropout, linear, ReLU) x (layers - 1), then dropout and the output linear."""
    if layers < 1:
        raise ValueError(f"ffn_layers must be >= 1; got {layers}")
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [_dropout(dropout), nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules += [_dropout(dropout), nn.Linear(width, out_dim)]
    return nn.Sequential(*modules)


def pool_atoms(h: Tensor, index: Tensor, size: int, how: str) -> Tensor:
    """Per-molecule sum / mean / sum-over-100 of atom vectors `h` (atoms, C) -> (size, C).

    `index` is each atom's molecule and `size` the number of molecules, so molecules at the end of
    the batch without atoms still get a (zero) row.
    """
    total = h.new_zeros((size, h.shape[1])).index_add_(0, index, h)
    if how == "sum":
        return total
    if how == "norm":
        return total / CHEMPROP_AGGREGATION_NORM
    counts = h.new_zeros(size).index_add_(0, index, h.new_ones(index.shape[0]))
    return total / counts.clamp(min=1.0)[:, None]


def _with_features(pooled: Tensor, batch: Data, feature_dim: int) -> Tensor:
    """Append the molecule-level vectors (fingerprints / descriptors) when the model uses them."""
    if feature_dim == 0:
        return pooled
    return torch.cat([pooled, batch.features.to(pooled.dtype)], dim=1)


def forward_with_atom_features(model: nn.Module, batch: Data, x: Tensor) -> Tensor:
    """Run `model` on `batch` with atom features `x` in place of `batch.x`.

    For attribution (e.g. integrated gradients over atom features): `batch` is copied shallowly,
    so the caller's batch is left unchanged and no other tensor is copied.
    """
    inputs = copy.copy(batch)
    inputs.x = x
    return model(inputs)


# ---------------------------------------------------------------------------------- D-MPNN


class DMPNN(nn.Module):
    """Directed message passing neural network (Yang et al. 2019, J. Chem. Inf. Model. 59:3370;
    chemprop v1).

    Hidden states live on directed bonds v->w:
        h0_vw = ReLU(W_i [x_v, e_vw])
        m_vw  = sum_{k->v} h_kv - h_wv            (every bond into v except the reverse of v->w)
        h_vw  = ReLU(h0_vw + W_h m_vw)            (depth - 1 times, dropout after each)
        m_v   = sum_{k->v} h_kv ;  h_v = ReLU(W_o [x_v, m_v])
    then mean / sum / sum-over-100 of atoms, the molecule-level vectors appended, and an FFN.
    An atom without bonds gets m_v = 0, so a one-atom molecule works.
    """

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        feature_dim: int,
        out_dim: int,
        hidden: int,
        depth: int,
        dropout: float,
        aggregation: str,
        ffn_hidden: int,
        ffn_layers: int,
        bias: bool,
    ) -> None:
        super().__init__()
        _check_dims("dmpnn", atom_dim, bond_dim)
        _check_choice("aggregation", aggregation, AGGREGATIONS)
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        self.depth, self.aggregation, self.feature_dim = depth, aggregation, feature_dim
        self.W_i = nn.Linear(atom_dim + bond_dim, hidden, bias=bias)
        self.W_h = nn.Linear(hidden, hidden, bias=bias)
        self.W_o = nn.Linear(atom_dim + hidden, hidden)
        self.dropout = _dropout(dropout)
        self.head = ffn_head(hidden + feature_dim, ffn_hidden, ffn_layers, out_dim, dropout)

    def _sum_incoming(self, h: Tensor, target: Tensor, num_atoms: int) -> Tensor:
        """(atoms, hidden): for each atom, the sum of the states of the bonds that point to it."""
        return h.new_zeros((num_atoms, h.shape[1])).index_add_(0, target, h)

    def forward(self, batch: Data) -> Tensor:
        x, (source, target) = batch.x, batch.edge_index
        if source.shape[0] % 2:
            raise ValueError("dmpnn expects each bond as two adjacent directed edges (2k, 2k+1)")
        reverse = torch.arange(source.shape[0], device=source.device) ^ 1
        h0 = F.relu(self.W_i(torch.cat([x[source], batch.edge_attr.to(x.dtype)], dim=1)))
        h = h0
        for _ in range(self.depth - 1):
            incoming = self._sum_incoming(h, target, x.shape[0])
            message = incoming[source] - h[reverse]  # into source, minus the bond back from target
            h = self.dropout(F.relu(h0 + self.W_h(message)))
        incoming = self._sum_incoming(h, target, x.shape[0])
        atoms = self.dropout(F.relu(self.W_o(torch.cat([x, incoming.to(x.dtype)], dim=1))))
        pooled = pool_atoms(atoms, batch.batch, batch.num_molecules, self.aggregation)
        return self.head(_with_features(pooled, batch, self.feature_dim))


def dmpnn(
    atom_dim: Features = 0,
    bond_dim: Features = 0,
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    hidden: Units = 300,
    depth: Blocks = 3,
    dropout: Rate = 0.0,
    aggregation: str = "mean",
    ffn_hidden: Units = 300,
    ffn_layers: Blocks = 2,
    bias: bool = False,
) -> nn.Module:
    """chemprop's D-MPNN (see `DMPNN`); defaults are chemprop v1's (hidden 300, depth 3, mean
    over atoms, a 2-layer FFN of 300, no bias in W_i / W_h, no dropout)."""
    return DMPNN(atom_dim, bond_dim, feature_dim, out_dim, hidden, depth, dropout, aggregation,
                 ffn_hidden, ffn_layers, bias)  # fmt: skip


# ---------------------------------------------------------------------------------- GIN


def _norm(kind: str, width: int) -> nn.Module:
    _check_choice("norm", kind, ("batch", "layer", "none"))
    if kind == "batch":
        return nn.BatchNorm1d(width)
    return nn.LayerNorm(width) if kind == "layer" else nn.Identity()


class GINE(nn.Module):
    """Graph isomorphism network (Xu et al. 2019, ICLR) with bond features in the messages as in
    GINE (Hu et al. 2020, ICLR): h_v' = MLP((1 + eps) h_v + sum_{u->v} ReLU(h_u + W e_uv)).

    Atom features -> linear embedding; `layers` x (GINEConv with a 2-layer MLP, norm, ReLU,
    dropout); sum (Xu 2019) or mean over atoms; molecule-level vectors appended; FFN head.
    """

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        feature_dim: int,
        out_dim: int,
        hidden: int,
        layers: int,
        dropout: float,
        pooling: str,
        norm: str,
        train_eps: bool,
        ffn_hidden: int,
        ffn_layers: int,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GINEConv  # imported here: keeps `import biomx` fast

        _check_dims("gin", atom_dim, bond_dim)
        _check_choice("pooling", pooling, ("sum", "mean"))
        if layers < 1:
            raise ValueError(f"layers must be >= 1; got {layers}")
        self.pooling, self.feature_dim = pooling, feature_dim
        self.embed = nn.Linear(atom_dim, hidden)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(layers):
            mlp = nn.Sequential(
                nn.Linear(hidden, hidden), _norm(norm, hidden), nn.ReLU(), nn.Linear(hidden, hidden)
            )
            self.convs.append(GINEConv(mlp, train_eps=train_eps, edge_dim=bond_dim))
            self.norms.append(_norm(norm, hidden))
        self.dropout = _dropout(dropout)
        self.head = ffn_head(hidden + feature_dim, ffn_hidden, ffn_layers, out_dim, dropout)

    def forward(self, batch: Data) -> Tensor:
        h = self.embed(batch.x)
        edge_attr = batch.edge_attr.to(h.dtype)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = self.dropout(F.relu(norm(conv(h, batch.edge_index, edge_attr))))
        pooled = pool_atoms(h, batch.batch, batch.num_molecules, self.pooling)
        return self.head(_with_features(pooled, batch, self.feature_dim))


def gin(
    atom_dim: Features = 0,
    bond_dim: Features = 0,
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    hidden: Units = 300,
    layers: Blocks = 5,
    dropout: Rate = 0.1,
    pooling: str = "sum",
    norm: str = "batch",
    train_eps: bool = False,
    ffn_hidden: Units = 300,
    ffn_layers: Blocks = 2,
) -> nn.Module:
    """GIN with bond features (see `GINE`): 5 layers of 300, batch norm, sum pooling.

    `norm: layer` avoids batch norm's error on a training batch of one single-atom molecule.
    """
    return GINE(atom_dim, bond_dim, feature_dim, out_dim, hidden, layers, dropout, pooling, norm,
                train_eps, ffn_hidden, ffn_layers)  # fmt: skip


# ---------------------------------------------------------------------------------- AttentiveFP


class AttentiveFP(nn.Module):
    """AttentiveFP (Xiong et al. 2020, J. Med. Chem. 63:8749), after PyG's
    `torch_geometric.nn.models.AttentiveFP`, producing a molecule embedding for an FFN head.

    Atom embedding; a graph attention layer over neighbours and bonds (GATEConv) + GRU, then
    `num_layers - 1` GAT layers + GRUs; the molecule state starts as the sum of atom states and is
    refined `num_timesteps` times by attention from the molecule to its atoms + a GRU.

    Deviations from PyG's class: dropout is an `nn.Dropout` module on the hidden states (PyG uses
    functional dropout, which MC dropout cannot switch on), and the attention coefficients get
    no dropout for the same reason; the sum pooling is sized by `num_molecules`; PyG's final
    linear layer is replaced by the FFN head (with the molecule-level vectors appended).
    """

    def __init__(
        self,
        atom_dim: int,
        bond_dim: int,
        feature_dim: int,
        out_dim: int,
        hidden: int,
        num_layers: int,
        num_timesteps: int,
        dropout: float,
        ffn_hidden: int,
        ffn_layers: int,
    ) -> None:
        super().__init__()
        # imported here: keeps `import biomx` fast
        from torch_geometric.nn import GATConv
        from torch_geometric.nn.models.attentive_fp import GATEConv

        _check_dims("attentive_fp", atom_dim, bond_dim)
        if num_layers < 1 or num_timesteps < 1:
            raise ValueError(
                f"num_layers and num_timesteps must be >= 1; got {num_layers}, {num_timesteps}"
            )
        self.feature_dim = feature_dim
        self.embed = nn.Linear(atom_dim, hidden)
        self.gate_conv = GATEConv(hidden, hidden, bond_dim, dropout=0.0)
        self.gru = nn.GRUCell(hidden, hidden)
        self.atom_convs = nn.ModuleList(
            GATConv(hidden, hidden, add_self_loops=False, negative_slope=0.01)
            for _ in range(num_layers - 1)
        )
        self.atom_grus = nn.ModuleList(nn.GRUCell(hidden, hidden) for _ in range(num_layers - 1))
        self.mol_conv = GATConv(hidden, hidden, add_self_loops=False, negative_slope=0.01)
        self.mol_gru = nn.GRUCell(hidden, hidden)
        self.num_timesteps = num_timesteps
        self.dropout = _dropout(dropout)
        self.head = ffn_head(hidden + feature_dim, ffn_hidden, ffn_layers, out_dim, dropout)

    def forward(self, batch: Data) -> Tensor:
        edge_index = batch.edge_index
        x = F.leaky_relu(self.embed(batch.x))
        h = F.elu(self.gate_conv(x, edge_index, batch.edge_attr.to(x.dtype)))
        x = F.relu(self.gru(self.dropout(h), x))
        for conv, gru in zip(self.atom_convs, self.atom_grus, strict=True):
            h = F.elu(conv(x, edge_index))
            x = F.relu(gru(self.dropout(h), x))

        # molecule readout: attention from each molecule to its own atoms
        atom_ids = torch.arange(x.shape[0], device=x.device)
        to_molecule = torch.stack([atom_ids, batch.batch], dim=0)
        out = F.relu(pool_atoms(x, batch.batch, batch.num_molecules, "sum"))
        for _ in range(self.num_timesteps):
            h = F.elu(self.mol_conv((x, out), to_molecule))
            out = F.relu(self.mol_gru(self.dropout(h), out))
        return self.head(_with_features(out, batch, self.feature_dim))


def attentive_fp(
    atom_dim: Features = 0,
    bond_dim: Features = 0,
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    hidden: Units = 200,
    num_layers: Blocks = 2,
    num_timesteps: Blocks = 2,
    dropout: Rate = 0.1,
    ffn_hidden: Units = 200,
    ffn_layers: Blocks = 2,
) -> nn.Module:
    """AttentiveFP (see `AttentiveFP`): hidden 200, 2 atom layers, 2 molecule timesteps."""
    return AttentiveFP(atom_dim, bond_dim, feature_dim, out_dim, hidden, num_layers, num_timesteps,
                       dropout, ffn_hidden, ffn_layers)  # fmt: skip


# ---------------------------------------------------------------------------------- fingerprint MLP


class FingerprintMLP(nn.Module):
    """An MLP on the molecule-level vectors only (Morgan fingerprints and/or RDKit descriptors):
    (linear, norm, ReLU, dropout) per hidden size, then the output linear. The strong classical
    baseline for property prediction; reads `batch.features` and nothing else."""

    def __init__(
        self, feature_dim: int, out_dim: int, hidden_sizes: Sequence[int], dropout: float, norm: str
    ) -> None:
        super().__init__()
        if feature_dim <= 0:
            raise ValueError(
                "fingerprint_mlp needs feature_dim > 0: set data.molecule.features, "
                "e.g. [morgan] or [morgan, descriptors]"
            )
        modules: list[nn.Module] = []
        width = feature_dim
        for size in hidden_sizes:
            modules += [nn.Linear(width, size), _norm(norm, size), nn.ReLU(), _dropout(dropout)]
            width = size
        modules.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*modules)

    def forward(self, batch: Data | Tensor) -> Tensor:
        return self.net(features_of(batch))  # a tensor: the vectors alone (an exported graph's input)


def fingerprint_mlp(
    atom_dim: Features = 0,
    bond_dim: Features = 0,
    feature_dim: Features = 0,
    out_dim: OutDim = 1,
    hidden_sizes: Annotated[Sequence[int], Between(1, 65_536)] = (1024, 256),
    dropout: Rate = 0.2,
    norm: str = "batch",
) -> nn.Module:
    """MLP on fingerprints / descriptors (see `FingerprintMLP`); atom_dim and bond_dim are
    accepted and ignored, so every molecule model takes the same input arguments."""
    return FingerprintMLP(feature_dim, out_dim, list(hidden_sizes), dropout, norm)
