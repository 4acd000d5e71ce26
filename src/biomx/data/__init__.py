"""Modality-independent data handling: splits and manifests."""
