"""Modality-independent data handling: samples, splits, batching, the on-disk cache, dense-label cases."""

__all__ = ["batching", "cache", "cases", "samples", "spatial_augment", "splits"]  # its modules: import from them (e.g. biomx.data.batching)
