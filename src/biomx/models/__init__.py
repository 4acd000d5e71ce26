"""The model zoo: every network biomx can build by name (see `registry.py`)."""
