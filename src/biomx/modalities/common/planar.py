"""2D image files read with Pillow, and the exceptions that mean "this image file is bad".

Shared by the image modality (`image.decode.read_image`) and the 2D segmentation datasets
(`common.msd.read_plane`), so both have one definition of a broken file.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from nibabel.filebasedimages import ImageFileError
from PIL import Image
from pydicom.errors import InvalidDicomError

# Decoders raise many exception types on damaged files; these mean "this file is bad".
# (pydicom raises AttributeError for a missing required tag, Pillow SyntaxError for a broken PNG.)
DECODE_ERRORS = (
    OSError, ValueError, EOFError, KeyError, IndexError, AttributeError, SyntaxError,
    RuntimeError, NotImplementedError, struct.error, zlib.error, zipfile.BadZipFile,
    InvalidDicomError, ImageFileError, Image.DecompressionBombError,
)

# Pillow modes that numpy cannot use directly -> the mode we convert them to.
_PILLOW_CONVERT = {"1": "L", "P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                   "LAB": "RGB", "HSV": "RGB"}


def read_pillow(path: Path) -> np.ndarray:
    """A PNG/JPEG/BMP/... file as (C, H, W) in its own dtype (palette, CMYK, ... converted)."""
    with Image.open(path) as img:
        img.load()  # decode now, so a truncated file fails here
        mode = _PILLOW_CONVERT.get(img.mode)
        arr = np.asarray(img.convert(mode) if mode else img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
