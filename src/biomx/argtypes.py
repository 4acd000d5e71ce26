"""Range-checked integer types for command-line options (the core's and the modalities' commands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low` (argparse prints one line and exits 2 otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text[:80]!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "positive integer" if low == 1 else f"integer >= {low}"  # argparse names it so
    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)
