"""The README's Python quickstart runs as written (on a subset, one epoch)."""

from __future__ import annotations

import re
from pathlib import Path

from data_paths import DNA

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_quickstart_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    # Same code, fewer samples, so the test stays fast; the README runs on everything.
    code = code.replace('f["train_images"][:, None]', 'f["train_images"][:512, None]')
    code = code.replace('f["train_labels"][:, 0]', 'f["train_labels"][:512, 0]')
    assert "[:512" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # our own documentation, not user input
    assert 0.5 < namespace["history"][-1]["val_auroc"] <= 1.0
    assert (tmp_path / "runs" / "python-quickstart" / "checkpoints" / "best.safetensors").is_file()


def test_genomics_python_example_runs(monkeypatch):
    doc = README.parent / "docs" / "genomics.md"
    code = re.search(r"```python\n(.*?)```", doc.read_text(), re.S).group(1)
    code = code.replace("epochs=3", "epochs=2").replace("width=64", "width=32")  # faster, same code
    # The doc reads the developer copy in ../shared/data; the test reads the same files from tests/data.
    code = code.replace('Path("../shared/data/dna_tf_binding")', f"Path({str(DNA)!r})")
    assert "../shared" not in code
    monkeypatch.chdir(README.parent)  # the example runs from the project folder
    namespace: dict = {}
    exec(compile(code, str(doc), "exec"), namespace)  # our own documentation, not user input
    assert namespace["trainer"].history[-1]["val_auroc"] > 0.8  # two epochs already separate them


def test_molecules_python_example_runs(tmp_path, monkeypatch):
    doc = README.parent / "docs" / "molecules.md"
    code = re.search(r"```python\n(.*?)```", doc.read_text(), re.S).group(1)
    code = code.replace("train.epochs=30", "train.epochs=2")  # faster, same code
    code = code.replace('"examples/freesolv.yaml"', repr(str(README.parent / "examples" / "freesolv.yaml")))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(doc), "exec"), namespace)  # our own documentation, not user input
    predictions = namespace["predictions"]
    assert len(predictions["pred_dG_hydration"]) == 642
    assert all(float(s) >= 0 for s in predictions["pred_dG_hydration_std"])
