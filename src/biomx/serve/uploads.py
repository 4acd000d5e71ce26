"""Uploaded files and pasted text -> the graph's raw input, read by the run's own modality.

Each upload is written into a private temporary folder under a name of our own (a counter and a
suffix from an allow-list, so the modality's reader recognises the format): the client's file name
never becomes a path. A pasted text is written the same way, with the suffix the client says it
is. The folder is removed when the request ends. Formats whose header names another file (e.g.
detached-header volumes) are not on the list: such a header could point the reader at any file on
the server. A file with a suffix off the list is saved without one (readers that sniff the
content, as image readers do for files exported without an extension, still read it).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from biomx.errors import BiomxError
from biomx.protocols import ExportableModality

# Suffixes an upload may keep (longest first: ".nii.gz" before ".gz").
FILE_SUFFIXES = (".nii.gz", ".csv.gz", ".tsv.gz", ".smi.gz", ".fa.gz", ".fna.gz",
                 ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".ima", ".nii", ".nrrd", ".mha",
                 ".npz", ".fa", ".fna", ".faa", ".fas", ".smi", ".sdf", ".sd", ".csv", ".tsv", ".tab",
                 ".txt", ".parquet", ".pq")  # fmt: skip
TEXT_SUFFIXES = (".smi", ".fa", ".csv", ".tsv", ".txt")  # what pasted text may be
NAME_LIMIT = 120


@dataclass
class Upload:
    """One upload as the client named it (base name only) and the bytes or text it holds."""

    name: str
    content: bytes


def safe_suffix(filename: str) -> str:
    """The allow-listed suffix of a client's file name ("" when it has none we keep)."""
    lower = filename.lower()
    return next((s for s in FILE_SUFFIXES if lower.endswith(s)), "")


def display_name(filename: str | None, fallback: str) -> str:
    """The client's base name only (no folders), printable, bounded: for the answer, never a path."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(c for c in base if c.isprintable()).strip()[:NAME_LIMIT]
    return base or fallback


def text_upload(text: str, suffix: str | None) -> tuple[Upload, str]:
    """Pasted text as an upload, with the suffix that says what it is."""
    if suffix not in TEXT_SUFFIXES:
        raise BiomxError(f"suffix: say what the pasted text is, one of {', '.join(TEXT_SUFFIXES)}; "
                         f"got {str(suffix)[:20]!r}")  # fmt: skip
    if not text.strip():
        raise BiomxError("text: the pasted text is empty")
    return Upload("pasted" + suffix, text.encode("utf-8")), suffix


def read_uploads(modality: Any, preprocessing: dict[str, Any], uploads: list[tuple[Upload, str]]
                 ) -> tuple[torch.Tensor, list[str]]:  # fmt: skip
    """(raw graph input rows, one name per row). Runs in a worker thread: it decodes files.

    Raises:
        BiomxError: a file the modality cannot read (its one line, with our temporary paths
            replaced by the client's names).
    """
    if not isinstance(modality, ExportableModality):
        raise BiomxError(f"the {modality.name} modality cannot read uploads for an exported graph")
    folder = Path(tempfile.mkdtemp(prefix="biomx-upload-"))
    try:
        paths, names = [], {}
        for i, (upload, suffix) in enumerate(uploads):
            path = folder / f"{i:04d}{suffix}"
            path.write_bytes(upload.content)
            paths.append(path)
            names[str(path)] = upload.name
        try:
            raw, row_names, _ = modality.read_raw(preprocessing, paths, False)
        except BiomxError as e:
            raise type(e)(_unmask(str(e), names, folder)) from None
        return raw, [_unmask(str(n), names, folder) for n in row_names]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unmask(text: str, names: dict[str, str], folder: Path) -> str:
    """Our temporary paths (and their stems) replaced by the client's names, on one line."""
    for path, name in names.items():
        text = text.replace(path, name)
        stem = Path(path).name
        text = re.sub(rf"(?<![\w.]){re.escape(stem)}\b", name, text)
    text = text.replace(str(folder), "upload")
    return " ".join(text.split())
