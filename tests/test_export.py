"""`biomx export`: a tiny trained image run (real chest X-rays) as ONNX, torch.export and int8,
each checked against PyTorch; the sidecar; raw inputs through ONNX Runtime against
`biomx.load(run)`; an ensemble's std; the refusals (no export plan, a failed check) write nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

import biomx
from biomx.cli import main
from biomx.errors import BiomxError, ExportRefused
from biomx.export.engines import open_engine
from biomx.export.graph import load_graph
from biomx.export.run_export import export_run
from biomx.modalities import MODALITIES, get_modality
from biomx.protocols import ExportPlan
from servers import train_image_run

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, png_folder) -> tuple[Path, dict]:
    """A tiny run, exported in all three formats (to RUN/export)."""
    run = train_image_run(tmp_path_factory.mktemp("export"), png_folder, "tiny")
    return run, export_run(run, echo=lambda line: None)


@pytest.fixture(scope="module")
def files(png_folder) -> list[Path]:
    return sorted(png_folder.rglob("*.png"))[::16]


def test_export_writes_three_checked_formats_and_the_sidecar(exported) -> None:
    run, info = exported
    out = run / "export"
    assert sorted(p.name for p in out.iterdir()) == ["model.int8.onnx", "model.json", "model.onnx", "model.pt2"]
    def no_nan(constant: str) -> None:
        raise AssertionError(f"model.json holds {constant}: JSON.parse would refuse it")

    assert json.loads((out / "model.json").read_text(), parse_constant=no_nan)["files"] == info["files"]
    for fmt, entry in info["files"].items():
        data = (out / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest(), fmt
    assert info["input"] == {"name": "image", "dtype": "float32", "shape": ["batch", 1, "height", "width"],
                             "description": info["input"]["description"]}  # fmt: skip
    assert [o["name"] for o in info["outputs"]] == ["predictions"] and info["outputs"][0]["columns"] == ["pneumonia"]
    assert info["task"] == {"kind": "binary", "classes": ["normal", "pneumonia"], "threshold": 0.5}  # the run's labels
    assert info["inside"][0].startswith("resize to 28x28") and "normalise" in info["inside"][1]
    assert info["example"]["image_size"] == [28, 28] and "dropout" in info["mc_dropout"]
    assert set(info["test_metrics"]) >= {"auroc", "accuracy"}
    for fmt in ("onnx", "torch"):
        check = info["checks"][fmt]
        assert check["rows"] > 0 and check["max_abs_diff"] <= check["tolerance"] == 1e-4 and check["label_agreement"] == 1.0
    int8 = info["checks"]["int8"]
    assert int8["method"].startswith(("static QDQ", "dynamic")) and int8["label_agreement"] >= 0.9
    assert set(int8["test_metrics"]["auroc"]) == {"fp32", "int8", "change"}
    assert set(info["latency_ms_batch64"]) == {"torch eager", "onnx runtime fp32", "onnx runtime int8"}
    assert all(ms > 0 for ms in info["latency_ms_batch64"].values())


def test_onnx_on_raw_images_matches_the_predictor(exported, files) -> None:
    run, _ = exported
    modality = get_modality("image")
    pre = json.loads((run / "run.json").read_text())["preprocessing"]
    raw, names, _ = modality.read_raw(pre, files)
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(None, {"image": raw.numpy()})
    expected = biomx.load(run).predict_proba(files)
    assert onnx_probs.shape == (len(files),) and names == [str(f) for f in files]
    np.testing.assert_allclose(onnx_probs, np.asarray(expected)[:, 1], atol=1e-4)
    # Other sizes go in too (dynamic height and width): resized inside the graph.
    bigger = torch.nn.functional.interpolate(raw, size=(40, 36), mode="bilinear")
    (resized,) = session.run(None, {"image": bigger.numpy()})
    torch_engine = open_engine(run, "torch")
    np.testing.assert_allclose(resized, torch_engine.run(bigger)[0], atol=1e-4)


def test_the_pt2_program_loads_without_pickle_and_agrees(exported, files) -> None:
    run, _ = exported
    program = torch.export.load(str(run / "export" / "model.pt2"))
    raw = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(raw).numpy(), load_graph(run).graph(raw).numpy(), atol=1e-5)


def test_the_onnx_engines_open_the_export(exported) -> None:
    run, _ = exported
    raw = torch.rand(5, 1, 28, 28)
    reference, std = open_engine(run, "torch").run(raw)
    onnx_engine = open_engine(run, "onnx")
    preds, onnx_std = onnx_engine.run(raw.numpy())
    assert onnx_engine.name == "onnx" and onnx_engine.loaded.plan.input.name == "image"
    assert std is None and onnx_std is None
    np.testing.assert_allclose(preds, reference, atol=1e-4)
    int8, _ = open_engine(run, "int8").run(raw)
    assert int8.shape == reference.shape and np.abs(int8 - reference).max() < 0.2


def test_explain_inputs_gives_one_rgb_overlay_per_image(exported) -> None:
    run, _ = exported
    loaded = load_graph(run)
    overlays = get_modality("image").explain_inputs(loaded.graph.members[0], loaded.task,
                                                    loaded.info["preprocessing"], torch.rand(2, 1, 28, 28), "small_cnn")
    assert len(overlays) == 2 and all(o.shape == (28, 28, 3) and o.dtype == np.uint8 for o in overlays)


def test_an_ensemble_exports_its_std(tmp_path, png_folder) -> None:
    run = train_image_run(tmp_path, png_folder, "ens", ensemble=2)
    info = export_run(run, tmp_path / "out", formats=["onnx"], echo=lambda line: None)
    assert [o["name"] for o in info["outputs"]] == ["predictions", "std"] and info["members"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.json", "model.onnx"]
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    raw = torch.rand(4, 1, 28, 28)
    preds, std = session.run(None, {"image": raw.numpy()})
    loaded = load_graph(run)
    with torch.no_grad():
        members = np.stack([loaded.task.predictions(m(loaded.plan.prepare(raw))).numpy() for m in loaded.graph.members])
    np.testing.assert_allclose(preds, members.mean(0), atol=1e-5)
    np.testing.assert_allclose(std, members.std(0, ddof=1), atol=1e-5)


class ImageWithout(ModuleType):
    """The image plug-in, with some members hidden or replaced (registered as "image" for one test)."""

    def __init__(self, base: ModuleType, hidden: tuple[str, ...] = (), **replaced) -> None:
        super().__init__("image")
        self.base, self.hidden, self.replaced, self.name = base, hidden, replaced, "image"

    def __getattr__(self, key: str):
        if key in self.hidden:
            raise AttributeError(key)
        return self.replaced[key] if key in self.replaced else getattr(self.base, key)


@pytest.fixture
def swap_image():
    base = get_modality("image")
    yield lambda **kw: MODALITIES.register("image", ImageWithout(base, **kw))
    MODALITIES.register("image", base)


def test_a_modality_without_an_export_plan_is_refused_in_one_line(exported, tmp_path, swap_image, capsys) -> None:
    run, _ = exported
    swap_image(hidden=("export_plan", "read_raw", "raw_rows"))
    with pytest.raises(ExportRefused, match=r"the image modality cannot be exported \(it offers no export plan\)"):
        export_run(run, tmp_path / "out", echo=lambda line: None)
    assert not (tmp_path / "out").exists()
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


class Drifting(nn.Module):
    """A prepare step with Python state: tracing bakes in one value, eager PyTorch moves on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(raw) + 0.5 * self.calls


def test_a_failed_check_writes_nothing(exported, tmp_path, swap_image) -> None:
    run, _ = exported
    base = get_modality("image")

    def drifting_plan(preprocessing) -> ExportPlan:
        plan = base.export_plan(preprocessing)
        plan.prepare = Drifting(plan.prepare)
        return plan

    swap_image(export_plan=drifting_plan)
    out = tmp_path / "out"
    with pytest.raises(ExportRefused, match=r"small_cnn: the onnx export fails its check against PyTorch "
                                            r"\(max abs difference .*, label agreement .*%"):  # fmt: skip
        export_run(run, out, formats=["onnx"], echo=lambda line: None)
    assert not out.exists()  # no temp file, no model, no sidecar, not even the folder


class FixesTheBatch(nn.Module):
    """A prepare step that reads the batch size as a Python number: torch.export refuses it."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.inner(raw).reshape(len(raw), *raw.shape[1:])


def test_an_untraceable_graph_is_refused_in_one_line(exported, tmp_path, swap_image, capsys) -> None:
    run, _ = exported
    base = get_modality("image")

    def plan(preprocessing) -> ExportPlan:
        found = base.export_plan(preprocessing)
        found.prepare = FixesTheBatch(found.prepare)
        return found

    swap_image(export_plan=plan)
    assert main(["export", str(run), "--out", str(tmp_path / "out"), "--formats", "torch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: small_cnn: cannot be exported to ONNX or torch.export (the code fixes the batch "
                          "axis to ") and err.count("\n") == 1  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_unknown_runs_and_formats_say_one_line(tmp_path) -> None:
    with pytest.raises(BiomxError, match="run directory not found"):
        export_run(tmp_path / "nope")
    with pytest.raises(BiomxError, match="--formats: unknown format 'tflite'"):
        export_run(tmp_path / "nope", formats=["tflite"])


def test_the_export_command_prints_a_summary(exported, tmp_path, capsys) -> None:
    run, _ = exported
    assert main(["export", str(run), "--out", str(tmp_path / "cli"), "--formats", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "max diff" in out and "labels 100.0% same" in out and "ms per batch of 64" in out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["model.json", "model.onnx"]


def test_formats_left_out_of_a_new_export_are_removed(exported, tmp_path) -> None:
    run, _ = exported
    out = tmp_path / "again"
    shutil.copytree(run / "export", out)
    said: list[str] = []
    info = export_run(run, out, formats=["onnx"], echo=said.append)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"] and list(info["files"]) == ["onnx"]
    assert said[:2] == [f"removed {out / 'model.pt2'} (from an earlier export; not in --formats)",
                        f"removed {out / 'model.int8.onnx'} (from an earlier export; not in --formats)"]


def test_a_fingerprint_regression_run_exports_with_a_dynamic_batch(tmp_path) -> None:
    """Regression (values de-standardised inside the graph) on real FreeSolv molecules, Morgan
    counts and RDKit descriptors in: ONNX Runtime on any batch size equals `biomx predict`."""
    pytest.importorskip("rdkit")
    from biomx.modalities.molecule.starter_data import export_molecules
    from biomx.predict import predict_files

    data = export_molecules("freesolv", tmp_path)
    cfg = tmp_path / "fs.yaml"
    cfg.write_text(f"name: fs\ndata: {{modality: molecule, source: csv, path: {data}, label_column: expt, "
                   "molecule: {id_column: id, features: [morgan, descriptors], morgan_counts: true}}\n"
                   "model: {name: fingerprint_mlp, args: {hidden_sizes: [32]}}\ntask: {kind: regression}\n"
                   "train: {epochs: 1, batch_size: 64, progress: false}\neval: {bootstrap: 0, explain: 0}\n"
                   f"output: {{dir: {tmp_path / 'runs'}, name: fs, tensorboard: false}}\n")  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "fs"
    export_run(run, formats=["onnx"], echo=lambda line: None)
    queries = tmp_path / "q.csv"
    queries.write_text("smiles,name\nCCO,ethanol\nc1ccccc1O,phenol\nOCC(O)CO,glycerol\n")
    torch_cols = predict_files(run, [queries])
    onnx_cols = predict_files(run, [queries], engine="onnx")
    assert onnx_cols["path"] == torch_cols["path"] and len(onnx_cols["path"]) == 3
    key = next(k for k in torch_cols if k.startswith("pred_"))
    np.testing.assert_allclose(np.array(onnx_cols[key], float), np.array(torch_cols[key], float), atol=1e-3)
