"""Shared by the sequence-explanation and variant tests: the real TF-bound windows, a local
one-hot encoder, and a hand-built motif detector whose right answers are known."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data_paths import DNA

OCT4, OCT4_RC = "ATGCAAAT", "ATTTGCAT"

def to_one_hot(seqs: list[str]) -> torch.Tensor:
    """(N, 4, L) float one-hot in ACGT order (lower case too; any other letter 0.25 each).

    A local encoder, not biomx.modalities.sequence.encoding: these tests pin the explanation code
    alone (tests/test_variants.py also checks the shared encoder as `encode_fn`)."""
    table = np.full((256, 4), 0.25, dtype=np.float32)
    for k, base in enumerate("ACGT"):
        table[ord(base)] = table[ord(base.lower())] = np.eye(4, dtype=np.float32)[k]
    codes = np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8)
    onehot = table[codes].reshape(len(seqs), -1, 4)
    return torch.from_numpy(np.ascontiguousarray(onehot.transpose(0, 2, 1)))


def read_fasta(name: str) -> list[str]:
    """The sequences of one FASTA file of tests/data/dna_tf_binding, in file order."""
    records = (DNA / name).read_text().split(">")[1:]
    return ["".join(record.splitlines()[1:]) for record in records]


def motif_model(*motifs: str, outputs: int = 1) -> nn.Sequential:
    """Each filter scores 1 on a perfect match of its motif and 0 otherwise (bias = 1 - len);
    max pooling over filters and positions, then logit = 4 * max - 2: 2 with a motif, -2
    without; a second site changes nothing."""
    width = max(len(m) for m in motifs)
    conv = nn.Conv1d(4, len(motifs), width)
    linear = nn.Linear(1, outputs)
    with torch.no_grad():
        conv.weight.zero_()
        for i, motif in enumerate(motifs):
            for j, base in enumerate(motif):
                conv.weight[i, "ACGT".index(base), j] = 1.0
            conv.bias[i] = 1.0 - len(motif)
        linear.weight.fill_(4.0)
        linear.bias.fill_(-2.0)
    return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Unflatten(1, (1, -1)),
                         nn.AdaptiveMaxPool1d(1), nn.Flatten(), linear)
