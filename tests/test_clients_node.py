"""The Node.js clients in clients/node on a tiny exported ensemble of real chest X-ray models:
predict_onnx.mjs (ONNX Runtime on RUN/export/model.onnx) and infer_rest.mjs (a real `biomx serve`
through the KServe v2 REST route) give the probabilities `biomx.load(run)` gives in Python, and the
ensemble's std as the PyTorch graph does, to 1e-4. `make test` installs node and the clients'
node_modules (npm ci).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from biomx.export.engines import open_engine
from biomx.predictor import load
from servers import export, serve, train_image_run

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(NODE is None or not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir(),
                       reason="needs node and clients/node/node_modules (make test installs both)"),  # fmt: skip
]


def node(script: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(NODE), str(NODE_DIR / script), *map(str, args)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def node_json(script: str, *args: str | Path) -> dict:
    done = node(script, *args)
    assert done.returncode == 0, f"node {script} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def as_proba(preds) -> np.ndarray:
    """A binary run's graph gives P(positive) per row; predict_proba gives both columns."""
    p = np.asarray(preds, dtype=np.float64)
    return np.stack([1 - p.reshape(-1), p.reshape(-1)], axis=1) if p.ndim == 1 or p.shape[1] == 1 else p


@pytest.fixture(scope="module")
def run(tmp_path_factory, png_folder) -> Path:
    run_dir = train_image_run(tmp_path_factory.mktemp("node"), png_folder, "xrays", ensemble=2)
    export(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def case(run, png_folder, tmp_path_factory) -> dict:
    """Six X-rays (three per class folder): the raw graph input as JSON, and what Python predicts."""
    paths = [p for folder in sorted(d for d in png_folder.iterdir() if d.is_dir())
             for p in sorted(folder.glob("*.png"))[:3]]  # fmt: skip
    engine = open_engine(run, "torch")
    raw, _, errors = engine.loaded.modality.read_raw(engine.loaded.info["preprocessing"], paths)
    assert not errors and len(raw) == 6
    sidecar = json.loads((run / "export" / "model.json").read_text())
    inputs = tmp_path_factory.mktemp("inputs") / "inputs.json"
    inputs.write_text(json.dumps({sidecar["input"]["name"]: raw.tolist()}))
    predictor = load(run)
    _, std = engine.run(raw)
    return {"inputs": inputs, "proba": predictor.predict_proba(paths), "std": std,
            "classes": list(predictor.classes_)}  # fmt: skip


def check(out: dict, case: dict) -> None:
    np.testing.assert_allclose(as_proba(out["predictions"]), case["proba"], atol=1e-4)
    assert case["std"] is not None and np.ptp(case["proba"][:, 1]) > 0  # an ensemble, not a constant model
    np.testing.assert_allclose(np.asarray(out["std"]).reshape(case["std"].shape), case["std"], atol=1e-4)


def test_predict_onnx_matches_python(run, case):
    out = node_json("predict_onnx.mjs", run / "export" / "model.onnx", case["inputs"])
    check(out, case)
    assert out["classes"] == case["classes"]


def test_predict_onnx_runs_the_int8_model_as_python_does(run, case):
    out = node_json("predict_onnx.mjs", run / "export" / "model.int8.onnx", case["inputs"])
    raw = json.loads(case["inputs"].read_text())
    preds, std = open_engine(run, "int8").run(np.asarray(next(iter(raw.values())), dtype=np.float32))
    np.testing.assert_allclose(np.asarray(out["predictions"]).reshape(preds.shape), preds, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["std"]).reshape(std.shape), std, atol=1e-4)


def test_predict_onnx_refuses_a_ragged_input(run, tmp_path):
    bad = tmp_path / "ragged.json"
    bad.write_text(json.dumps([[[[0.1, 0.2]], [[0.3]]]]))
    done = node("predict_onnx.mjs", run / "export" / "model.onnx", bad)
    assert done.returncode == 1 and "not a rectangular array" in done.stderr and len(done.stderr.splitlines()) == 1


def test_infer_rest_matches_python(run, case, tmp_path):
    with serve(run, log=tmp_path / "serve.log") as url:
        out = node_json("infer_rest.mjs", url, run.name, case["inputs"])
        check(out, case)
        missing = node("infer_rest.mjs", url, "no_such_model", case["inputs"])
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr
