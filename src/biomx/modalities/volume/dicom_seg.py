"""DICOM SEG: a predicted label map written as a DICOM Segmentation object (highdicom) that
references the DICOM series it was predicted from, so a PACS or viewer shows it on that series.

One segment per foreground class (the run's class names as labels), binary segmentation, frames
in the series' slice order (along the slice normal, as the volume was read), rows and columns as
stored in the source slices. The source headers are read here only to build the SEG: none of
their values (patient identifiers, dates) is printed or written anywhere else.

highdicom is in the `deploy` extra: without it the NIfTI mask is still written and one warning
line says what to install.
"""

from __future__ import annotations

import io
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from biomx.engine.checkpoint import atomic_write_bytes
from biomx.errors import DataError
from biomx.plugins import MissingExtra, import_extra
from biomx.version import __version__

SEG_SUFFIX = ".seg.dcm"
_SERIES_NUMBER = 9001  # a series of its own in the study; viewers sort it after the scans
# Without these a SEG cannot say which study, series, slices and space it belongs to.
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
             "Modality")
# Type 2 in a SEG (present, may be empty), copied from the source; de-identified series often
# drop them, so a missing one is copied as empty rather than refusing the series.
_MAY_BE_EMPTY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "StudyID", "AccessionNumber", "ReferringPhysicianName")


def seg_path(mask_path: Path) -> Path:
    """The SEG written beside a mask: `case.nii.gz` -> `case.seg.dcm`."""
    name = mask_path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return mask_path.with_name(name + SEG_SUFFIX)


@cache
def highdicom_or_warn() -> Any:
    """highdicom, or None after one warning line (per process) saying how to install it."""
    try:
        return import_extra("highdicom", "writing DICOM SEG masks")
    except MissingExtra as err:
        print(f"warning: {err}; writing NIfTI masks only", file=sys.stderr)
        return None


def write_dicom_seg(labels: np.ndarray, slice_files: list[str], path: Path, *, classes: list[str] | None = None,
                    model: str = "unknown") -> Path | None:  # fmt: skip
    """Write `labels` as a DICOM SEG of the series whose slices are `slice_files`.

    Args:
        labels: integer label map (columns, rows, slices) in the file voxel order of the series
            as read (`volume.files.to_file_order`): slice k is `slice_files[k]`.
        slice_files: the source slice files, in volume order.
        path: the SEG file to write (atomically).
        classes: every class name, background first; None: "class 1", "class 2"... up to the
            largest label.
        model: the model's name, recorded in the algorithm identification.

    Returns:
        `path`; None when highdicom is not installed (one warning line, once) or the series
        cannot be referenced by a SEG (one warning line naming the folder and the missing
        attribute, never a header value): the NIfTI mask is the output that always exists.

    Raises:
        DataError: a source slice that cannot be read any more, a mask that does not fit the
            series.
    """
    hd = highdicom_or_warn()
    if hd is None:
        return None
    sources = [_read_header(Path(f)) for f in slice_files]
    frames = np.asarray(labels).transpose(2, 1, 0)  # (slices, rows, columns), as DICOM stores them
    where = Path(slice_files[0]).parent if slice_files else path
    rows, cols = (int(sources[0].Rows), int(sources[0].Columns)) if sources else (0, 0)
    if frames.shape != (len(sources), rows, cols):
        raise DataError(f"{where}: a mask of {frames.shape[0]} x {frames.shape[1]} x {frames.shape[2]} "
                        f"(slices x rows x columns) does not fit this series ({len(sources)} x {rows} x {cols})")
    names = list(classes[1:]) if classes else [f"class {k}" for k in range(1, max(int(frames.max()), 1) + 1)]
    if int(frames.max()) > len(names):
        raise DataError(f"{where}: mask label {int(frames.max())} but only {len(names)} foreground classes")
    missing = [key for key in _REQUIRED if not all(key in ds for ds in sources)]
    if missing:
        return _skip(where, f"its slices lack {', '.join(missing)}")
    for ds in sources:
        for key in _MAY_BE_EMPTY:
            if key not in ds:
                setattr(ds, key, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # highdicom's warnings quote header values
            seg = _segmentation(hd, sources, frames.astype(np.uint8 if len(names) < 256 else np.uint16), names, model)
            buffer = io.BytesIO()
            seg.save_as(buffer, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError) as err:  # the message may quote headers
        return _skip(where, f"highdicom refused it: {type(err).__name__}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _skip(where: Path, reason: str) -> None:
    print(f"warning: {where}: no DICOM SEG written ({reason}); NIfTI mask only", file=sys.stderr)
    return None


def _read_header(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, ValueError, EOFError, pydicom.errors.InvalidDicomError) as err:
        raise DataError(f"{path}: cannot read this DICOM slice again to write the SEG "
                        f"({type(err).__name__}); was it moved or changed during predict?") from None


def _segmentation(hd: Any, sources: list[Any], frames: np.ndarray, names: list[str], model: str) -> Any:
    """The SEG dataset: a label map (frames of segment numbers) on the source slices."""
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="biomx", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"model": model},
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=name[:64], segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for k, name in enumerate(names, start=1)
    ]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="biomx", manufacturer_model_name=model[:64],
        software_versions=__version__, device_serial_number="none", series_description="biomx segmentation",
        omit_empty_frames=bool(frames.any()),  # an all-empty mask still gets its frames: a valid SEG
    )
