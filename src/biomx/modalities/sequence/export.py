"""A sequence run's exported graph input: token ids, one-hot encoded inside the graph.

Tokenising text stays outside (any language can map letters to ids with the vocabulary the
sidecar carries); the one-hot step, ambiguity codes as distributions over letters included, is
a table lookup inside the graph, so `prepare(tokens)` is exactly the batch `read_inputs` makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biomx.data.samples import Samples
from biomx.modalities.sequence.encoding import PAD, alphabet_spec
from biomx.modalities.sequence.pipeline import read_tokens
from biomx.protocols import ExportPlan, GraphInput


class OneHot(nn.Module):
    """int64 tokens (B, L) -> float32 (B, A, L): each token's row of the alphabet's one-hot table
    (letters one 1, codes a distribution, PAD and any id outside 0-255 all zeros)."""

    def __init__(self, alphabet: str) -> None:
        super().__init__()
        table = alphabet_spec(alphabet).onehot.T  # (256, A): token -> distribution
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # An id outside the table would make the lookup fail (or read garbage in ONNX): as PAD.
        ids = torch.where((tokens >= 0) & (tokens < 256), tokens, torch.full_like(tokens, PAD))
        return F.embedding(ids, self.table).transpose(1, 2)


def vocabulary(alphabet: str) -> dict[str, int]:
    """Upper-case letter or ambiguity code -> token id (lower case maps like upper case)."""
    spec = alphabet_spec(alphabet)
    return {symbol: token for token, symbol in enumerate(spec.letters + spec.codes)}


def export_plan(preprocessing: dict[str, Any]) -> ExportPlan:
    """Token ids in, one-hot inside (see the module docstring)."""
    alphabet, length = preprocessing["alphabet"], int(preprocessing["length"])
    spec = alphabet_spec(alphabet)
    description = (f"int64 token ids (batch, {length}): each {alphabet} sequence mapped letter by letter "
                   f"(case-insensitive) to example.vocabulary ({spec.letters} are 0-{len(spec.letters) - 1}, then "
                   f"the ambiguity codes {spec.codes}); a sequence longer than {length} is centre-cropped "
                   f"(start at (n - {length}) // 2), a shorter one right-padded with {PAD}"
                   + ("; a protein's trailing '*' is dropped" if alphabet == "protein" else ""))  # fmt: skip
    both = (
        " (the model sees both strands: the averaging is part of the model)"
        if preprocessing.get("strand_average")
        else ""
    )
    return ExportPlan(
        prepare=OneHot(alphabet),
        input=GraphInput(name="tokens", dtype="int64", shape=["batch", length], description=description),
        outside="FASTA/CSV parsing and tokenisation to the ids in example.vocabulary, centre-cropped or "
                f"right-padded with {PAD} to {length}",
        inside=[f"one-hot over {spec.letters} (ambiguity codes as distributions over their letters, "
                f"padding {PAD} as zeros) to float32 (batch, {len(spec.letters)}, {length}){both}"],
        example={"alphabet": alphabet, "letters": spec.letters, "length": length, "pad": PAD,
                 "vocabulary": vocabulary(alphabet), "crop": "centre", "case_sensitive": False},
    )  # fmt: skip


def read_raw(preprocessing: dict[str, Any], inputs: list[str | Path],
             skip_errors: bool = False) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:  # fmt: skip
    """FASTA/CSV files -> int64 tokens (N, L) as the graph takes them, record ids, skipped records."""
    tokens, ids, failures = read_tokens(preprocessing, inputs, skip_errors)
    return tokens.long(), ids, failures


def raw_rows(preprocessing: dict[str, Any], samples: Samples, index: np.ndarray) -> torch.Tensor:
    """The loaded sequences' tokens at `index` (the splits' datasets one-hot encode these)."""
    return samples.inputs.tokens[torch.as_tensor(np.asarray(index), dtype=torch.long)].long()
