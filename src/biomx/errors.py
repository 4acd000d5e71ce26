"""The one exception type for user mistakes.

A `BiomxError` is something the user can fix (a bad path, a typo in a config, a corrupt
file). The CLI prints its message as one line and exits non-zero, with no traceback.
Anything else that escapes is a bug in biomx and keeps its traceback.
"""

from __future__ import annotations

import errno


class BiomxError(Exception):
    """A problem with the user's input: its message names the file, row or key and the fix."""


class DataError(BiomxError):
    """An unreadable, corrupt or inconsistent input file or record."""


class ConfigError(BiomxError):
    """An invalid experiment configuration (unknown key, bad value)."""


# What a user can do about an OS error on a path they chose: these are never bugs in biomx.
OS_ADVICE = {
    errno.EACCES: "permission denied: check the permissions or choose another path",
    errno.EPERM: "operation not permitted: check the permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another output path",
    errno.ENOSPC: "no space left on the device: free some disk space or choose another output path",
    errno.EDQUOT: "disk quota exceeded: free some disk space or choose another output path",
    errno.EFBIG: "the file is too large for this file system or its limits: choose another output path",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter path",
    errno.EISDIR: "is a folder, where a file was expected",
    errno.ENOTDIR: "a part of the path is a file, where a folder was expected",
    errno.ENOENT: "no such file or folder",
}


def os_error_line(err: OSError) -> str | None:
    """One line for an OS error on a named path ("PATH: cannot write (permission denied: ...)"),
    or None when the error names no path (then it is not the user's to fix and keeps its traceback)."""
    if err.filename is None:
        return None
    advice = OS_ADVICE.get(err.errno, err.strerror or type(err).__name__)
    return f"{err.filename}: {advice}"


class ExportRefused(BiomxError):
    """A run (its model, modality or task) that cannot be exported, with the one-line reason."""
