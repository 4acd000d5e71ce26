"""The one exception type for user mistakes.

A `BiomxError` is something the user can fix (a bad path, a typo in a config, a corrupt
file). The CLI prints its message as one line and exits non-zero, with no traceback.
Anything else that escapes is a bug in biomx and keeps its traceback.
"""

from __future__ import annotations


class BiomxError(Exception):
    """A problem with the user's input: its message names the file, row or key and the fix."""


class DataError(BiomxError):
    """An unreadable, corrupt or inconsistent input file or record."""


class ConfigError(BiomxError):
    """An invalid experiment configuration (unknown key, bad value)."""
