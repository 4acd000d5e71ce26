"""2D image files read with Pillow, the exceptions that mean "this image file is bad", and the
pixel limit checked on a file's header before anything is decoded.

Shared by the image modality (`image.decode.read_image`) and the 2D segmentation datasets
(`common.msd.read_plane`), so both have one definition of a broken or oversized file.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from nibabel.filebasedimages import ImageFileError
from PIL import Image
from pydicom.errors import InvalidDicomError

from biomx.errors import DataError

# Decoders raise many exception types on damaged files; these mean "this file is bad".
# (pydicom raises AttributeError for a missing required tag, Pillow SyntaxError for a broken PNG.)
DECODE_ERRORS = (
    OSError, ValueError, EOFError, KeyError, IndexError, AttributeError, SyntaxError,
    RuntimeError, NotImplementedError, struct.error, zlib.error, zipfile.BadZipFile,
    InvalidDicomError, ImageFileError, Image.DecompressionBombError,
)

MAX_PIXELS_KEY = "data.image.max_pixels"
DEFAULT_MAX_PIXELS = 100_000_000  # 10000 x 10000: whole-slide thumbnails pass, a header bomb does not

# Pillow's own decompression-bomb check fires inside Image.open, before we can read the size: a
# warning above 89 M pixels, an error naming neither the file nor our key above 179 M. Every
# Pillow image biomx decodes goes through `open_pillow`, which checks `max_pixels` itself.
Image.MAX_IMAGE_PIXELS = None

# Pillow modes that numpy cannot use directly -> the mode we convert them to.
_PILLOW_CONVERT = {"1": "L", "P": "RGB", "PA": "RGBA", "CMYK": "RGB", "YCbCr": "RGB",
                   "LAB": "RGB", "HSV": "RGB"}


def check_pixels(path: Path, shape: Sequence[int], max_pixels: int | None) -> None:
    """Refuse a header that declares more than `max_pixels` pixels, before any decoding.

    Args:
        path: the file (named in the message).
        shape: the declared extent, width first: (width, height), or (width, height, frames).
        max_pixels: the limit; None checks nothing.

    Raises:
        DataError: naming the file, the declared size and the key that raises the limit.
    """
    count = math.prod(int(n) for n in shape)  # Python ints: no overflow on absurd headers
    if max_pixels is not None and count > max_pixels:
        text = " x ".join(str(int(n)) for n in shape)
        raise DataError(f"{path}: the header declares a {text} image ({count:,} pixels), more than {MAX_PIXELS_KEY} "
                        f"({max_pixels:,}); raise {MAX_PIXELS_KEY} to read it, or downsample the file")


def open_pillow(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`Image.open` with the pixel limit checked on the header (`.size` decodes nothing)."""
    img = Image.open(path)
    try:
        width, height = img.size
        check_pixels(path, (width, height), max_pixels)
    except BaseException:
        img.close()
        raise
    return img


def read_pillow(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A PNG/JPEG/BMP/... file as (C, H, W) in its own dtype (palette, CMYK, ... converted)."""
    with open_pillow(path, max_pixels) as img:
        img.load()  # decode now, so a truncated file fails here
        mode = _PILLOW_CONVERT.get(img.mode)
        arr = np.asarray(img.convert(mode) if mode else img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
