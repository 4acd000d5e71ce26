"""The model zoo: every network biomx can build by name (see `registry.py`)."""

__all__ = ["bounds", "image2d", "molecule", "registry", "segmentation", "sequence"]  # its modules: import from them (e.g. biomx.models.image2d)
