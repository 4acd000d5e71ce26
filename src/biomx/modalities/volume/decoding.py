"""What the volume format readers share: the exceptions that mean a damaged file, and LPS -> RAS.

`nrrd` is pynrrd, or None where it is not installed (NRRD files then fail with a hint).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from pydicom.errors import InvalidDicomError

try:  # optional: pynrrd is small and pure Python, but not every install needs NRRD
    import nrrd
except ImportError:  # pragma: no cover - depends on the environment
    nrrd = None

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Decoders raise many exception types on damaged files; these mean "this file is bad".
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, EOFError, KeyError, IndexError, AttributeError, RuntimeError,
    NotImplementedError, struct.error, zlib.error, InvalidDicomError, ImageFileError,
    HeaderDataError,
)
if nrrd is not None:
    DECODE_ERRORS += (nrrd.NRRDError,)
