"""In-memory sequences for `biomx.predictor`: strings encoded as `read_inputs` encodes records.

Each string is one sequence (any case; the run's alphabet and codes), centre-cropped or padded
to the run's length and one-hot encoded, as the records of a FASTA or CSV file are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomx.errors import DataError
from biomx.modalities.sequence.encoding import ALPHABETS, encode, one_hot


def read_objects(preprocessing: dict[str, Any], objects: Any) -> tuple[torch.Tensor, list[str]]:
    """Sequence strings -> the one-hot batch `read_inputs` makes of a file's records, and names.

    An array of numbers is taken as already one-hot encoded: (A, L) or (N, A, L), with the run's
    alphabet size A and length L.

    Raises:
        DataError: not a string (an array given to a sequence run), a character outside the
            run's alphabet and its codes (naming the sequence and the position).
    """
    if isinstance(objects, torch.Tensor) or (isinstance(objects, np.ndarray) and objects.dtype.kind not in "USO"):
        return _encoded(preprocessing, objects)
    items = [objects] if isinstance(objects, str) else list(objects)
    names = [f"[{i}]" for i in range(len(items))]
    for name, item in zip(names, items, strict=True):
        if isinstance(item, Path) or not isinstance(item, (str, np.str_)):
            what = f"{item}: no such file" if isinstance(item, Path) else f"{name}: a {type(item).__name__}"
            raise DataError(f"{what}; a sequence run reads sequence strings or FASTA/CSV files")
        if "." in item or "/" in item:  # no letter of a sequence: a file name that is not there
            raise DataError(f"{item}: no such file")
    tokens, _ = encode([str(s) for s in items], preprocessing["alphabet"], length=preprocessing["length"],
                       ids=names)  # fmt: skip
    return one_hot(tokens, preprocessing["alphabet"]), names


def _encoded(preprocessing: dict[str, Any], array: Any) -> tuple[torch.Tensor, list[str]]:
    """Already one-hot encoded sequences, checked against the run's alphabet size and length."""
    x = torch.as_tensor(array.detach().cpu() if isinstance(array, torch.Tensor) else np.asarray(array))
    x = x[None] if x.ndim == 2 else x
    size, length = len(ALPHABETS[preprocessing["alphabet"]]), preprocessing["length"]
    if x.ndim != 3 or tuple(x.shape[1:]) != (size, length):
        raise DataError(f"an array of shape {tuple(array.shape)} is not one-hot sequences for this run: "
                        f"expected (N, {size}, {length}) or ({size}, {length}), or sequence strings")  # fmt: skip
    return x.float(), [f"[{i}]" for i in range(len(x))]
