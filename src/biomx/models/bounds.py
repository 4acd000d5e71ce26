"""Allowed ranges of model arguments, declared in the builders' own signatures.

A builder annotates a size as `Annotated[int, Between(1, 1024)]` (a rate as a float, a list of
layer sizes as `Sequence[int]`); `check_bounds` refuses a value outside its range in one line
naming `model.args.<key>` and the range, before anything is built. A typo such as width: 10**9
or depth: 200 would otherwise try to allocate terabytes (or hang) before any error; the ranges
are wide enough for any network that fits on one GPU. Builders without annotations (a user's
plug-in model) are not checked here.
"""

from __future__ import annotations

import math
import numbers
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from biomx.errors import ConfigError


@dataclass(frozen=True)
class Between:
    """An argument's allowed range, both ends included (for a list: each of its values)."""

    low: float
    high: float

    def allows(self, value: float) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        def shown(x: float) -> str:  # 1_000_000 reads at a glance, and YAML takes it as written
            return f"{x:_}" if abs(x) >= 100_000 else f"{x}"

        return f"from {shown(self.low)} to {shown(self.high)}"


# Arguments most builders share (`in_channels` and `out_dim` are set from the data and task).
InChannels = Annotated[int, Between(1, 4096)]
OutDim = Annotated[int, Between(1, 100_000)]
SpatialDims = Annotated[int, Between(2, 3)]
Rate = Annotated[float, Between(0.0, 1.0)]
Units = Annotated[int, Between(1, 16_384)]  # channels or hidden units of one layer
Blocks = Annotated[int, Between(1, 64)]  # repeated layers or blocks


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def declared_bounds(builder: Callable[..., Any]) -> dict[str, tuple[Any, Between]]:
    """{argument: (its type, its Between)} for the builder's annotated arguments."""
    try:
        hints = typing.get_type_hints(builder, include_extras=True)
    except (NameError, TypeError):  # a plug-in's annotation we cannot resolve: nothing declared
        return {}
    found = {}
    for key, hint in hints.items():
        if typing.get_origin(hint) is Annotated:
            kind, *extras = typing.get_args(hint)
            for extra in extras:
                if isinstance(extra, Between):
                    found[key] = (kind, extra)
    return found


def _refusal(kind: Any, bound: Between, value: Any) -> str | None:
    """What is wrong with `value` for an argument of type `kind` within `bound`, or None."""
    if kind is int:
        return None if _is_int(value) and bound.allows(value) else f"an integer {bound}"
    if kind is float:
        return None if _is_number(value) and bound.allows(value) else f"a number {bound}"
    if typing.get_origin(kind) in (Sequence, list, tuple):
        items = value if isinstance(value, Sequence) and not isinstance(value, str | bytes) else None
        if items is not None and all(_is_int(v) and bound.allows(v) for v in items):
            return None
        return f"a list of integers, each {bound}"
    return None


def check_bounds(name: str, builder: Callable[..., Any], args: dict[str, Any]) -> None:
    """Raise ConfigError (one line) if an argument in `args` is outside the builder's range.

    Example: "model.args.width: small_cnn takes an integer from 1 to 256; got 1000000000".
    """
    bounds = declared_bounds(builder)
    for key, value in args.items():
        if key in bounds:
            wanted = _refusal(*bounds[key], value)
            if wanted is not None:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise ConfigError(f"model.args.{key}: {name} takes {wanted}; got {shown}")


__all__ = ["Between", "Blocks", "InChannels", "OutDim", "Rate", "SpatialDims", "Units", "check_bounds",
           "declared_bounds"]  # fmt: skip
