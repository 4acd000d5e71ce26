"""Open Inference Protocol (KServe v2) JSON: a request's input tensor, checked against the graph's
`GraphInput`, and the response's output tensors.

Every mistake is one line naming the field and what it should be (the app answers it as a 400;
too many rows as a 413).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from biomx.errors import BiomxError
from biomx.protocols import GraphInput
from biomx.serve.models import DATATYPES


class TooLarge(BiomxError):
    """More rows than one request may carry (413)."""


def parse_request(body: Any, spec: GraphInput, max_rows: int) -> tuple[np.ndarray, Any]:
    """(the input rows as an array of the graph's dtype, the request id or None)."""
    if not isinstance(body, dict):
        raise BiomxError("request body: expected a JSON object with an 'inputs' list")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BiomxError(f"inputs: expected a list of one tensor (the graph's input {spec.name!r})")
    tensor = inputs[0]
    if tensor.get("name") != spec.name:
        raise BiomxError(f"inputs[0].name: expected {spec.name!r}, got {_short(tensor.get('name'))}")
    want = DATATYPES[spec.dtype]
    if tensor.get("datatype") != want:
        raise BiomxError(f"inputs[0].datatype: expected {want}, got {_short(tensor.get('datatype'))}")
    shape = _check_shape(tensor.get("shape"), spec, max_rows)
    rows = _data(tensor.get("data"), shape, spec.dtype)
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BiomxError("id: expected a string")
    return rows, request_id


def _check_shape(shape: Any, spec: GraphInput, max_rows: int) -> list[int]:
    expected = "[" + ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape) + "]"
    if (not isinstance(shape, list) or len(shape) != len(spec.shape)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)):  # fmt: skip
        raise BiomxError(f"inputs[0].shape: expected {expected} (-1: any size >= 1), got {_short(shape)}")
    for got, want in zip(shape, spec.shape, strict=True):
        if isinstance(want, int) and got != want:
            raise BiomxError(f"inputs[0].shape: expected {expected} (-1: any size >= 1), got {shape}")
    if shape[0] > max_rows:
        raise TooLarge(f"inputs[0].shape: {shape[0]} rows; at most {max_rows} per request (send several requests)")
    return shape


def _data(data: Any, shape: list[int], dtype: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BiomxError("inputs[0].data: expected a list of numbers (flat, row-major, or nested)")
    try:
        values = np.asarray(data)
    except (TypeError, ValueError):  # ragged nesting
        values = np.asarray([], dtype=object)
    if values.dtype.kind not in "iuf" and values.size:  # strings, booleans, objects, ragged lists
        raise BiomxError("inputs[0].data: expected numbers only, in a flat or evenly nested list")
    values = values.astype(np.float64)
    if values.size != math.prod(shape):
        raise BiomxError(f"inputs[0].data: {values.size} values, but shape {shape} holds {math.prod(shape)}")
    if not np.isfinite(values).all():
        raise BiomxError("inputs[0].data: NaN or infinite values; send finite numbers")
    if dtype == "int64":
        if not (values == np.round(values)).all() or np.abs(values).max(initial=0) > 2**53:
            raise BiomxError("inputs[0].data: INT64 input holds non-integer values")
        return values.reshape(shape).astype(np.int64)
    return values.reshape(shape).astype(np.float32)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def output_tensors(preds: np.ndarray, std: np.ndarray | None) -> list[dict[str, Any]]:
    """The response's `outputs`: predictions, and std for an ensemble (FP32, flat row-major)."""
    out = [_tensor("predictions", preds)]
    if std is not None:
        out.append(_tensor("std", std))
    return out


def _tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    array = np.asarray(array, dtype=np.float32)
    return {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.reshape(-1).tolist()}
