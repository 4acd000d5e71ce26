"""Which image files make up a dataset: a folder per class, or a CSV manifest.

Both give `ImageRecords` (paths, labels, patient ids), decoded later by
`image.decode.decode_images`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomx.errors import DataError
from biomx.modalities.image.decode import is_image_file


@dataclass
class ImageRecords:
    """Image files with their labels and (optional) patient ids, index-aligned.

    `labels` holds a class name (str) per image, or for multilabel data a list of names.
    `groups` holds a patient id per image (None when unknown), for patient-level splits.
    """

    paths: list[Path]
    labels: list[Any]
    groups: list[str | None]

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.labels) == len(self.groups):
            raise ValueError("paths, labels and groups must have the same length")

    def __len__(self) -> int:
        return len(self.paths)


def image_files_under(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted; hidden files and folders (".name") skipped."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and is_image_file(p)
    )  # fmt: skip


def records_from_folder(root: str | Path) -> ImageRecords:
    """List a folder-per-class tree: `root/<class>/**/<image files>`, label = class folder name.

    Hidden files and folders (".name") and non-image files are skipped.

    Args:
        root: the folder holding one subfolder per class.

    Returns:
        ImageRecords sorted by class then path, with groups all None.

    Raises:
        DataError: root is not a folder, has no class folders, or a class folder has no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected root/<class>/<image files>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders; expected root/<class>/<image files>")
    paths: list[Path] = []
    labels: list[Any] = []
    for class_dir in class_dirs:
        files = image_files_under(class_dir)
        if not files:
            raise DataError(f"{class_dir}: class folder has no image files (.png .jpg .bmp .tif "
                            ".dcm .nii .nii.gz); add images or remove the folder")
        paths += files
        labels += [class_dir.name] * len(files)
    return ImageRecords(paths, labels, [None] * len(paths))


def records_from_csv(path: str | Path, *, path_column: str = "path", label_column: str = "label",
                     group_column: str | None = "patient_id",
                     root: str | Path | None = None) -> ImageRecords:
    """List images from a CSV manifest: one row per image, with its path, label and patient id.

    Relative paths are resolved against `root`, else the CSV's folder (files are not opened
    here: `decode_images` reports unreadable ones). If any label contains "|", the data is
    multilabel and every label becomes a list ("a|b" -> ["a", "b"]). The group column is
    optional; an empty group cell gives None.

    Args:
        path: the CSV file (UTF-8, optional BOM, first line = header).
        path_column: column with image paths.
        label_column: column with class names.
        group_column: column with patient ids (None or absent: no groups).
        root: folder that relative paths are relative to.

    Returns:
        ImageRecords in row order.

    Raises:
        DataError: unreadable CSV, missing column, or a row with an empty path or label
            (rows are numbered as in a spreadsheet: header = row 1).
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV: {' '.join(str(e).split())}") from e
    for arg, column in (("path_column", path_column), ("label_column", label_column)):
        if column not in header:
            found = ", ".join(header) or "none"
            raise DataError(f"{path}: missing column {column!r} (columns found: {found}); "
                            f"rename the column or pass {arg}=...")
    has_groups = group_column is not None and group_column in header
    paths: list[Path] = []
    raw_labels: list[str] = []
    groups: list[str | None] = []
    for row_number, row in enumerate(rows, start=2):
        for column in (path_column, label_column):
            if not (row.get(column) or "").strip():  # a short row gives None
                raise DataError(f"{path}: row {row_number}: empty {column!r}")
        paths.append(base / row[path_column].strip())  # an absolute path stays absolute
        raw_labels.append(row[label_column].strip())
        groups.append(((row.get(group_column) or "").strip() or None) if has_groups else None)
    labels: list[Any] = raw_labels
    if any("|" in label for label in raw_labels):
        labels = [[s.strip() for s in label.split("|") if s.strip()] for label in raw_labels]
    return ImageRecords(paths, labels, groups)
