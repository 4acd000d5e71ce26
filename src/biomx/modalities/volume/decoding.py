"""What the volume format readers share: the exceptions that mean a damaged file, LPS -> RAS,
and the voxel limit every format passes between reading its header and reading its voxels.

`nrrd` is pynrrd, or None where it is not installed (NRRD files then fail with a hint).
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from pydicom.errors import InvalidDicomError

from biomx.errors import DataError

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

LIMIT_KEY = "data.volume.max_voxels"


@dataclass
class OpenedVolume:
    """A volume whose header has been read: the shape it declares, and how to read its voxels.

    Attributes:
        shape: every dimension the header declares (spatial axes and channels), in any order.
        read: reads the voxels -> (data (x, y, z[, c]) in file voxel order, voxel -> RAS affine).
    """

    shape: tuple[int, ...]
    read: Callable[[], tuple[np.ndarray, np.ndarray]]


def check_voxels(path: Path, shape: tuple[int, ...], max_voxels: int) -> None:
    """Refuse a header that declares an empty volume or more than `max_voxels` values.

    Raises:
        DataError: naming the file, the declared shape and the key that raises the limit.
    """
    text = " x ".join(str(int(n)) for n in shape)
    if any(int(n) < 1 for n in shape):
        raise DataError(f"{path}: its header declares shape {text}; every dimension must be at least 1")
    count = math.prod(int(n) for n in shape)  # Python ints: no overflow on absurd headers
    if count > max_voxels:
        raise DataError(f"{path}: its header declares shape {text} ({count:,} voxels), more than "
                        f"{LIMIT_KEY} ({max_voxels:,}); raise {LIMIT_KEY} to read it")
