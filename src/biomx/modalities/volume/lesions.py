"""Synthetic CT-like lesion volumes written as a Medical Segmentation Decathlon dataset
(`biomx datasets --name lesions3d --export DIR`).

`write_lesion_dataset`: int16 HU volumes in gzipped NIfTI with ellipsoid lesions and their
masks. Synthetic, but built to exercise what real CT does to a pipeline: anisotropic voxels
that differ per case, files stored in non-RAS orientations, faint and partial-volume lesions,
noise. The mask is exactly where the lesion intensity was drawn. dataset.json is written last,
so a folder with a dataset.json is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from biomx.errors import ConfigError
from biomx.modalities.common.msd_writer import (
    msd_files,
    out_folder,
    refuse_existing,
    write_dataset_json,
)
from biomx.modalities.volume.files import Volume, write_nifti

AIR, FAT, TISSUE = -1000.0, -100.0, 40.0  # HU
# Every 4th case is stored in one of these voxel orders (the readers must reorient it).
_STORED_ORIENTATIONS = ("LPS", "PLS", "RAI")


def _lesion_case(rng: np.random.Generator, shape: tuple[int, int, int],
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case in RAS voxel order: (image int16 HU, lesion ids uint8 (0 = none, 1.. = each
    lesion; the mask is ids > 0), voxel -> RAS mm affine)."""
    in_plane, thickness = rng.uniform(0.7, 1.0), rng.uniform(1.5, 3.0)
    spacing = np.array([in_plane, in_plane, thickness])
    extent = np.array(shape) * spacing
    centre = (np.array(shape) - 1) / 2
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)  # mm from the volume centre

    # Body: an ellipsoid (wider than deep, cut by the first and last slices), a fat layer under
    # its surface, soft tissue inside with a smooth low-frequency texture.
    body = extent * np.array([rng.uniform(0.40, 0.46), rng.uniform(0.34, 0.42), rng.uniform(0.55, 0.7)])
    shift = rng.uniform(-2.0, 2.0, size=3) * np.array([1, 1, 0])
    fat = rng.uniform(2.0, 5.0)
    inner = body - fat
    px, py, pz = x - shift[0], y - shift[1], z - shift[2]
    in_body = (px / body[0]) ** 2 + (py / body[1]) ** 2 + (pz / body[2]) ** 2 <= 1
    in_tissue = (px / inner[0]) ** 2 + (py / inner[1]) ** 2 + (pz / inner[2]) ** 2 <= 1
    texture = gaussian_filter(rng.standard_normal(shape), sigma=6.0 / spacing)  # ~6 mm blobs
    texture *= rng.uniform(5.0, 12.0) / max(float(texture.std()), 1e-6)
    clean = np.full(shape, AIR)
    clean[in_body] = FAT + 0.3 * texture[in_body]
    clean[in_tissue] = TISSUE + texture[in_tissue]

    # Lesions: rotated ellipsoids inside the soft tissue, hypo- to hyper-dense, some faint.
    mask = np.zeros(shape, dtype=bool)
    ids = np.zeros(shape, dtype=np.uint8)
    half_room = np.minimum(inner, extent / 2)  # the body may run past the first/last slice
    largest = float(np.clip(0.35 * half_room.min(), 3.0, 12.0))
    centres: list[tuple[np.ndarray, float]] = []
    for number in range(1, int(rng.integers(1, 4)) + 1):
        radii = rng.uniform(3.0, largest, size=3)
        rotation = Rotation.random(random_state=rng).as_matrix()
        room = np.maximum(half_room - radii.max() - 1.0, 0.0)
        for _attempt in range(50):  # a centre inside the tissue, clear of earlier lesions
            c = shift + rng.uniform(-1, 1, size=3) * room
            inside = ((c - shift) / np.maximum(room, 1e-6)) ** 2
            if inside.sum() <= 1 and all(np.linalg.norm(c - o) > r + radii.max() for o, r in centres):
                break
        centres.append((c, radii.max()))
        # Rotated local coordinates: d = R^T (p - c), then the ellipsoid's quadratic form.
        d = [rotation[0, k] * (x - c[0]) + rotation[1, k] * (y - c[1]) + rotation[2, k] * (z - c[2])
             for k in range(3)]  # fmt: skip
        lesion = sum((d[k] / radii[k]) ** 2 for k in range(3)) <= 1
        lesion &= in_tissue
        contrast = rng.uniform(-60.0, 80.0)
        if abs(contrast) < 15.0:  # faint, not invisible
            contrast = 15.0 if contrast >= 0 else -15.0
        clean[lesion] += contrast
        ids[lesion & ~mask] = number
        mask |= lesion

    # Scanner: partial-volume blur (in-plane PSF ~1 mm FWHM, slice profile), then noise.
    blurred = gaussian_filter(clean, sigma=(0.45 / in_plane, 0.45 / in_plane, 0.4))
    noisy = blurred + rng.normal(0.0, rng.uniform(10.0, 25.0), size=shape)
    image = np.clip(np.round(noisy), -1024, 3071).astype(np.int16)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -centre * spacing + rng.uniform(-20.0, 20.0, size=3)  # a scanner-like origin
    return image, ids, affine


def _stored_geometry(affine: np.ndarray, shape: tuple[int, int, int], codes: str,
                     ) -> tuple[np.ndarray, tuple[int, ...]]:
    """(file affine, file shape) for storing a RAS-ordered array in voxel order `codes` ("LPS")."""
    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    stored_shape = tuple(int(n) for _, n in sorted(zip(transform[:, 0], shape, strict=True)))
    return affine @ inv_ornt_aff(transform, shape), stored_shape


def write_lesion_dataset(out_dir: str | Path, n_cases: int = 24, seed: int = 0,
                         shape: tuple[int, int, int] = (64, 64, 40), *, overwrite: bool = False,
                         on_case: Callable[[str, np.ndarray, np.ndarray], None] | None = None) -> Path:
    """Write synthetic CT-like lesion volumes and masks as an MSD-style dataset.

    Each case: air (-1000 HU) around a body ellipsoid with a fat layer (~-100 HU) and soft
    tissue (~40 HU, smooth texture); 1-3 rotated ellipsoid lesions (semi-axes 3-12 mm, at most a
    third of the body's room; contrast -60..+80 HU, at least 15 HU); partial-volume blur and
    Gaussian noise (sigma 10-25 HU). Voxels 0.7-1.0 mm in-plane, 1.5-3 mm between slices, different per case. Every 4th case
    is stored in LPS, PLS or RAI voxel order (affine and data agree); a mask has exactly its
    image's affine. Deterministic for a seed (file bytes included).

    Args:
        out_dir: destination; gets dataset.json, imagesTr/lesion_XXX.nii.gz (int16),
            labelsTr/lesion_XXX.nii.gz (uint8, 1 = lesion).
        n_cases: number of cases (all in "training": the experiment splits them).
        seed: the random seed.
        shape: voxels per case in RAS order (i: right, j: anterior, k: superior).
        overwrite: replace files already there (else refuse, naming the first, writing nothing).
        on_case: called as on_case(name, lesion ids, affine) for each case written: the lesion
            ids (uint8, 0 = none, 1.. = one per lesion) in RAS voxel order, as `read_volume`
            returns the mask, and the voxel -> RAS mm affine (for box annotations per lesion).

    Returns:
        the dataset.json path.

    Raises:
        ConfigError: n_cases < 1, an axis shorter than 16 voxels, or a file it would write
            exists (without `overwrite`).
    """
    if n_cases < 1:
        raise ConfigError(f"n_cases must be at least 1, got {n_cases}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ConfigError(f"shape must be 3 axes of at least 16 voxels, got {shape}")
    names = [f"lesion_{i:03d}" for i in range(n_cases)]
    refuse_existing(msd_files(Path(out_dir), names, ".nii.gz"), overwrite)
    out = out_folder(out_dir)
    for i, name in enumerate(names):
        image, ids, affine = _lesion_case(np.random.default_rng([seed, i]), shape)
        mask = (ids > 0).astype(np.uint8)
        codes = _STORED_ORIENTATIONS[(i // 4) % len(_STORED_ORIENTATIONS)] if i % 4 == 3 else "RAS"
        stored, stored_shape = _stored_geometry(affine, shape, codes)
        reference = Volume(array=image, affine=affine, spacing=tuple(float(s) for s in np.diag(affine)[:3]),
                           source=name, original_affine=stored, original_shape=stored_shape)  # fmt: skip
        write_nifti(image, reference, out / "imagesTr" / f"{name}.nii.gz")  # back into `codes` order
        write_nifti(mask, reference, out / "labelsTr" / f"{name}.nii.gz")
        if on_case is not None:
            on_case(name, ids, affine)
    info = {
        "name": "SyntheticLesions",
        "description": f"Synthetic CT-like volumes with 1-3 ellipsoid lesions each (biomx, seed {seed}); "
                       "for testing and demonstrating 3D segmentation, not for clinical use",
        "reference": "biomx.modalities.volume.lesions.write_lesion_dataset", "licence": "CC0-1.0",
        "release": "1.0", "tensorImageSize": "3D", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "lesion"},
    }  # fmt: skip
    return write_dataset_json(out, info, names, ".nii.gz")
