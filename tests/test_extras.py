"""Extras: `pip install biomx` serves images and volumes; a plug-in whose extra is not installed
is one line naming the pip command, never a traceback.

A package is hidden the way Python itself allows: `sys.modules[name] = None` makes `import name`
raise ModuleNotFoundError. The CLI checks run in a subprocess, so nothing leaks into this one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from biomx.errors import BiomxError
from biomx.plugins import EXTRAS, MissingExtra, Registry, install_hint

ROOT = Path(__file__).resolve().parents[1]
EXTRA_PACKAGES = sorted(EXTRAS)  # what only an extra installs: absent from a base install
MOLECULES_LINE = 'error: the molecule modality needs RDKit: pip install "biomx[molecules]"'


def run_without(hidden: list[str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`biomx ARGS` in a fresh interpreter where the packages `hidden` cannot be imported."""
    code = textwrap.dedent(f"""
        import sys
        for name in {hidden!r}:
            sys.modules[name] = None
        from biomx.cli import main
        sys.exit(main({list(args)!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_table_names_real_packages_of_real_extras() -> None:
    """Each package in the table is installed here by the extra the table names (dev has them all)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    distributions = packages_distributions()
    for module, (_, extra) in EXTRAS.items():
        listed = {spec.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower().replace("_", "-")
                  for spec in extras[extra]}  # fmt: skip
        installed_as = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        assert installed_as & listed, f"{module}: installed as {installed_as}, extra {extra} lists {listed}"
    named = {extra for _, extra in EXTRAS.values()}
    assert named <= set(extras) - {"all", "dev"}
    assert any(spec.startswith("biomx[") and all(e in spec for e in named) for spec in extras["all"])
    assert any(spec.startswith("biomx[all]") for spec in extras["dev"])


def test_missing_extra_is_one_line_from_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_rdkit_plugin.py").write_text("from rdkit import Chem\nname = 'mol'\n")
    (tmp_path / "needs_other_plugin.py").write_text("import not_a_biomx_extra_package\nname = 'other'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "rdkit", None)
    registry = Registry("modality", "data.modality", {"mol": "needs_rdkit_plugin", "json": "json"})
    with pytest.raises(MissingExtra) as err:
        registry.get("mol")
    assert isinstance(err.value, BiomxError)
    assert str(err.value) == 'the mol modality needs RDKit: pip install "biomx[molecules]"'
    assert registry.missing() == {"mol": str(err.value)}
    assert registry.available() == ["json"] and registry.names() == ["mol", "json"]
    # a missing package no extra installs is not the user's to install: it keeps its traceback
    with pytest.raises(ModuleNotFoundError):
        Registry("modality", "data.modality", {"other": "needs_other_plugin"}).get("other")


def test_install_hint_only_for_packages_of_an_extra() -> None:
    assert install_hint(ModuleNotFoundError("x", name="torch_geometric.nn")) == (
        'needs PyTorch Geometric: pip install "biomx[molecules]"')
    assert install_hint(ModuleNotFoundError("x", name="pyfaidx")) == 'needs pyfaidx: pip install "biomx[genomics]"'
    assert install_hint(ModuleNotFoundError("x", name="numpy")) is None
    assert install_hint(ImportError("cannot import name X")) is None


@pytest.mark.slow
def test_train_a_molecule_config_without_rdkit_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "mol.yaml"
    config.write_text("name: mol\ndata: {modality: molecule, source: csv, path: mols.csv}\n"
                      "model: {name: dmpnn}\ntask: {kind: regression}\n")  # fmt: skip
    done = run_without(["rdkit"], "train", str(config), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [MOLECULES_LINE]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_export_a_molecule_dataset_without_rdkit_is_one_line(tmp_path: Path) -> None:
    done = run_without(["rdkit"], "datasets", "--name", "freesolv", "--export", str(tmp_path / "data"))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and 'pip install "biomx[molecules]"' in lines[0], lines
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_the_base_install_serves_images_and_volumes(tmp_path: Path) -> None:
    """No package of an extra: `import biomx` works and imports none of them, images and volumes
    validate and export, and the listing says what to install for the rest."""
    code = textwrap.dedent(f"""
        import sys
        hidden = {EXTRA_PACKAGES!r}
        for name in hidden:
            sys.modules[name] = None
        import biomx
        from biomx.cli import main
        assert main(["validate", "examples/pneumonia_resnet18.yaml"]) == 0
        assert main(["validate", "examples/adrenalmnist3d.yaml"]) == 0
        assert main(["datasets"]) == 0
        assert main(["datasets", "--name", "pneumoniamnist", "--export", {str(tmp_path / "png")!r},
                     "--format", "png", "--limit", "4"]) == 0
        try:
            biomx.featurize
        except biomx.BiomxError as err:
            print("featurize:", err)
        loaded = sorted(name for name in hidden if sys.modules.get(name) is not None)
        print("loaded:", loaded)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "loaded: []" in done.stdout
    assert "image:" in done.stdout and "pneumoniamnist" in done.stdout
    assert 'the molecule modality needs RDKit: pip install "biomx[molecules]"' in done.stdout
    assert 'the sequence modality needs pyfaidx: pip install "biomx[genomics]"' in done.stdout
    assert 'featurize: biomx.featurize needs RDKit: pip install "biomx[molecules]"' in done.stdout
    assert len(list((tmp_path / "png").rglob("*.png"))) == 4


@pytest.mark.slow
def test_a_misplaced_key_is_reported_as_such_without_an_extra() -> None:
    """A key of the sequence section in an image config names its owner, RDKit or not."""
    done = run_without(["rdkit"], "validate", "examples/pneumonia_resnet18.yaml", "--set", "data.sequence.alphabet=dna")
    assert done.returncode == 1
    assert done.stderr.startswith("error: data.sequence: unknown key; it belongs to data.modality: sequence"), done.stderr
