"""DNA, RNA and protein sequences <-> tokens, one-hot and reverse complements.

`encode` turns all sequences at once into ONE uint8 token tensor (N, L) via a byte lookup table;
`decode` is its inverse; `one_hot` and `reverse_complement` work on whole batches of tokens.

Tokens: letter k of the alphabet is token k, the ambiguity codes follow in `AMBIGUITY` order:

    dna      A0 C1 G2 T3 | N4 R5 Y6 S7 W8 K9 M10 B11 D12 H13 V14          (rna: U3 for T3)
    protein  A0 C1 D2 E3 F4 G5 H6 I7 K8 L9 M10 N11 P12 Q13 R14 S15 T16 V17 W18 Y19
             | X20 B21 Z22 J23 U24 O25
    PAD = 255

One-hot, a code is a distribution over its letters (N: 0.25 each, R: A and G 0.5 each, X: 1/20
each; selenocysteine U counts as C, pyrrolysine O as K). Lower case (soft-masked) encodes like
upper case; `decode` returns upper case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from biomx.errors import DataError

ALPHABETS = {"dna": "ACGT", "rna": "ACGU", "protein": "ACDEFGHIKLMNPQRSTVWY"}
_IUPAC = {"N": "ACGT", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC",
          "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG"}
AMBIGUITY = {"dna": _IUPAC, "rna": {c: s.replace("T", "U") for c, s in _IUPAC.items()},
             "protein": {"X": ALPHABETS["protein"], "B": "DN", "Z": "EQ", "J": "IL", "U": "C",
                         "O": "K"}}
PAD = 255
_INVALID = 254  # what the encode lookup table gives for a byte that is no token


@dataclass(frozen=True)
class AlphabetSpec:
    """An alphabet's lookup tables: by ASCII byte (`lut`) or by token (the others)."""

    letters: str
    codes: str  # ambiguity codes, tokens len(letters), len(letters) + 1, ...
    lut: np.ndarray  # (256,) uint8 byte -> token, or _INVALID
    chars: np.ndarray  # (256,) uint8 token -> upper-case byte; 0 for PAD, 1 for no token
    onehot: np.ndarray  # (A, 256) float32: token -> distribution over letters; PAD -> zeros
    fill: int  # the "unknown" token (N or X): what a shift uncovers


def _make_spec(alphabet: str) -> AlphabetSpec:
    letters, codes = ALPHABETS[alphabet], AMBIGUITY[alphabet]
    lut, chars = np.full(256, _INVALID, np.uint8), np.ones(256, np.uint8)
    onehot = np.zeros((len(letters), 256), np.float32)
    for token, symbol in enumerate(letters + "".join(codes)):
        lut[ord(symbol)] = lut[ord(symbol.lower())] = token
        chars[token] = ord(symbol)
        meaning = codes[symbol] if token >= len(letters) else symbol
        onehot[[letters.index(m) for m in meaning], token] = 1 / len(meaning)
    chars[PAD] = 0
    fill = len(letters) + list(codes).index("X" if alphabet == "protein" else "N")
    return AlphabetSpec(letters, "".join(codes), lut, chars, onehot, fill)


_SPECS = {name: _make_spec(name) for name in ALPHABETS}
# Token -> complementary token; DNA and RNA share token ids (U is where T is).
_COMPLEMENT = np.arange(256, dtype=np.uint8)
_COMPLEMENT[:15] = _SPECS["dna"].lut[list(b"TGCANYRSWMKVHDB")]


def alphabet_spec(alphabet: str) -> AlphabetSpec:
    """The lookup tables of "dna", "rna" or "protein" (ValueError for another name)."""
    if alphabet not in _SPECS:
        raise ValueError(f"alphabet must be one of {', '.join(_SPECS)}, got {alphabet!r}")
    return _SPECS[alphabet]


def encode(sequences: list[str], alphabet: str = "dna", *, length: int | None = None,
           ids: list[str] | None = None,
           sources: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode sequences to tokens (module docstring), all at once with a byte lookup table.

    A protein's trailing stop '*' is dropped. Longer sequences are centre-cropped to `length`
    (an odd excess loses one more base on the right), shorter ones right-padded with PAD.

    Args:
        sequences: the sequences, any case.
        alphabet: "dna", "rna" or "protein".
        length: the output length L; None = the longest sequence.
        ids, sources: each sequence's id and location (`SequenceRecords`), for error messages.

    Returns:
        (tokens uint8 (N, L), lengths int64 (N,): the tokens before the padding).

    Raises:
        DataError: a character outside the alphabet and its codes; the message names the first
            such sequence (source, id), the character and its 1-based position.
        ValueError: unknown alphabet, or length < 1.
    """
    spec = alphabet_spec(alphabet)
    if length is not None and length < 1:
        raise ValueError(f"length must be None or >= 1, got {length}")
    if alphabet == "protein":
        sequences = [s[:-1] if s.endswith("*") else s for s in sequences]
    sizes = np.fromiter(map(len, sequences), np.int64, len(sequences))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    # "replace" writes one '?' (not a token) per non-ASCII character: offsets stay positions.
    codes = spec.lut[np.frombuffer("".join(sequences).encode("ascii", "replace"), np.uint8)]
    bad = np.flatnonzero(codes == _INVALID)
    if len(bad):
        i = int(np.searchsorted(starts, bad[0], side="right")) - 1
        record = f"record {ids[i]}" if ids else f"sequence {i}"  # i: 0-based list index
        where = f"{sources[i]}: {record}" if sources else record
        position = int(bad[0] - starts[i])
        raise DataError(f"{where}: invalid character {sequences[i][position]!r} at position "
                        f"{position + 1} for {alphabet} (allowed: {spec.letters} or "
                        f"{spec.codes}, any case)")
    n, width = len(sequences), int(sizes.max(initial=0)) if length is None else length
    if n and (sizes == width).all():  # the common case: nothing to crop or pad
        return torch.from_numpy(codes.reshape(n, width)), torch.from_numpy(sizes)
    kept = np.minimum(sizes, width)
    columns = np.arange(width)
    valid = columns < kept[:, None]
    tokens = np.full((n, width), PAD, np.uint8)
    tokens[valid] = codes[(starts[:-1, None] + (sizes - kept)[:, None] // 2 + columns)[valid]]
    return torch.from_numpy(tokens), torch.from_numpy(kept)


def decode(tokens: torch.Tensor, alphabet: str = "dna") -> list[str]:
    """Tokens (B, L) or (L,) back to upper-case strings, PAD dropped: the inverse of `encode`.

    Raises:
        ValueError: unknown alphabet, or a token not in it.
    """
    array = np.atleast_2d(tokens.cpu().numpy())
    chars = alphabet_spec(alphabet).chars[array]
    if (chars == 1).any():
        raise ValueError(f"token {array[chars == 1][0]} is not in the {alphabet} alphabet")
    return [row.tobytes().replace(b"\0", b"").decode("ascii") for row in chars]


def one_hot(tokens: torch.Tensor, alphabet: str = "dna") -> torch.Tensor:
    """Tokens (..., L) to float32 (..., A, L): letters one 1, codes a distribution, PAD zeros.

    This and the other token functions run in numpy on the CPU (results go back to the tokens'
    device): on a busy 2-core CPU, torch ops on a batch waited 10-100 ms for torch's intra-op
    threads, numpy took well under a millisecond.
    """
    x = np.take(alphabet_spec(alphabet).onehot, tokens.cpu().numpy(), axis=1)  # (A, ..., L)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 0, -2))).to(tokens.device)


def reverse_complement_array(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Reverse complement the first lengths[i] tokens of each row of (B, L); PAD after them."""
    columns = np.arange(tokens.shape[1])
    source = np.maximum(lengths[:, None] - 1 - columns, 0)
    flipped = _COMPLEMENT[np.take_along_axis(tokens, source, 1)]
    return np.where(columns < lengths[:, None], flipped, PAD).astype(np.uint8)


def reverse_complement(tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse complement DNA/RNA tokens (B, L) or (L,); the padding stays on the right.

    Codes are complemented too (R <-> Y, K <-> M, B <-> V, D <-> H; N, S, W stay).

    Args:
        tokens: right-padded DNA or RNA tokens (protein tokens give nonsense).
        lengths: valid lengths (B,) or a scalar; None = each row's non-PAD count.

    Returns:
        uint8 tokens, shaped as `tokens`.
    """
    t = np.atleast_2d(tokens.cpu().numpy())
    n = (t != PAD).sum(1) if lengths is None else np.atleast_1d(lengths.cpu().numpy())
    return torch.from_numpy(reverse_complement_array(t, n).reshape(tokens.shape)).to(tokens.device)


def reverse_complement_one_hot(x: torch.Tensor) -> torch.Tensor:
    """Reverse complement one-hot DNA/RNA (B, 4, L): flip letters (ACGT order) and positions.

    Only right for equal-length unpadded batches (padding would move to the left); else use
    `reverse_complement` on the tokens.
    """
    return x.flip((-2, -1))
