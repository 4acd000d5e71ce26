"""Pixel-region rules for burned-in text: `--blank MODALITY[/MANUFACTURER]:X,Y,W,H` blanks (sets
to the image minimum) that rectangle of every frame of the images the rule matches, e.g. the top
band where an ultrasound machine of one make prints the patient's name. A header profile cannot
see text in the pixels; the site that knows its machines states where it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from biomx.errors import BiomxError

_RULE = re.compile(r"^([A-Za-z0-9 ]+)(?:/([^:]+))?:(\d+),(\d+),(\d+),(\d+)$")


@dataclass(frozen=True)
class BlankRule:
    modality: str
    manufacturer: str  # a case-insensitive part of Manufacturer; "" matches any
    x: int
    y: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> BlankRule:
        found = _RULE.match(text.strip())
        if not found or int(found.group(5)) == 0 or int(found.group(6)) == 0:
            raise BiomxError(f"--blank: {text!r} is not MODALITY[/MANUFACTURER]:X,Y,WIDTH,HEIGHT "
                             "(pixels, width and height above 0), e.g. US/ACME:0,0,640,60")  # fmt: skip
        modality, maker, *box = found.groups()
        return cls(modality.strip().upper(), (maker or "").strip().lower(), *(int(v) for v in box))

    def matches(self, ds: Dataset) -> bool:
        return str(ds.get("Modality", "")).upper() == self.modality and \
            self.manufacturer in str(ds.get("Manufacturer", "")).lower()  # fmt: skip

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"


def blank_regions(ds: Dataset, rules: tuple[BlankRule, ...]) -> list[str]:
    """Blank the regions of the rules matching `ds` in place; the regions blanked ("x,y,w,h").

    Compressed pixels are decoded and stored uncompressed (Explicit VR Little Endian): a region
    cannot be blanked inside a compressed stream.
    """
    matching = [rule for rule in rules if rule.matches(ds)]
    if not matching or "PixelData" not in ds:
        return []
    pixels = ds.pixel_array.copy()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = pixels if frames > 1 else pixels[np.newaxis]
    low = pixels.min()
    for rule in matching:
        view[:, rule.y:rule.y + rule.height, rule.x:rule.x + rule.width, ...] = low
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR") and pixels.shape[-1] == 3 and int(ds.SamplesPerPixel) == 3:
        photometric = "RGB"  # pydicom decodes YBR JPEG to RGB
    ds.set_pixel_data(pixels, photometric, int(ds.BitsStored), generate_instance_uid=False)
    return [str(rule) for rule in matching]


# Images that commonly carry burned-in text (patient name, date, institution printed into the
# pixels) and are often exported without a BurnedInAnnotation attribute to say so: ultrasound,
# X-ray angiography and fluoroscopy, endoscopy, photographs and microscopy, and secondary captures
# (screen saves, scanned documents; PS3.15 Annex E, the Clean Pixel Data option's notes).
TEXT_PRONE_MODALITIES = frozenset({"US", "XA", "RF", "ES", "XC", "GM", "OT"})
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its .1-.4 multi-frame classes


def unmarked_text_risk(ds: Dataset) -> str:
    """Why an image without BurnedInAnnotation may still hold text in its pixels ("" if not):
    "secondary capture", "US", "XA", ... The caller refuses it unless a blank rule or the user
    (`accept_unmarked`) covers it."""
    if "PixelData" not in ds or str(ds.get("BurnedInAnnotation", "") or "").strip():
        return ""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == _SECONDARY_CAPTURE or sop_class.startswith(_SECONDARY_CAPTURE + "."):
        return "secondary capture"
    image_type = ds.get("ImageType") or []
    if "SCREEN SAVE" in [str(v).upper() for v in (image_type if isinstance(image_type, MultiValue | list) else [image_type])]:
        return "screen save"
    modality = str(ds.get("Modality", "")).upper()
    return modality if modality in TEXT_PRONE_MODALITIES else ""
