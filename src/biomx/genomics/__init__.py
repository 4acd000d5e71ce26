"""Genomics: variant effect prediction with DNA sequence models."""

from biomx.genomics.variants import (
    Variant,
    VariantWindows,
    read_variants,
    score_variants,
    variant_windows,
    write_variant_scores,
)

__all__ = [
    "Variant",
    "VariantWindows",
    "read_variants",
    "score_variants",
    "variant_windows",
    "write_variant_scores",
]
