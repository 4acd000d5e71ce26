"""`biomx serve` on a tiny real run (a 2-member ensemble of a small CNN on 28x28 chest X-rays).

Route by route with FastAPI's test client: health and metadata, KServe v2 inference equal to
`biomx.load(run)` on the same inputs, uploads of PNG and DICOM files, every kind of bad input a
one-line 4xx (never a 5xx), body and row limits, timeouts, metrics, logs free of file names. Then
one real server process: concurrent clients are micro-batched and each gets its own answer.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from biomx.cli import main
from biomx.modalities import get_modality
from biomx.predictor import load
from biomx.serve.app import create_app
from biomx.serve.batcher import MicroBatcher, QueueFull

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(root: Path, png_folder: Path) -> Path:
    cfg = root / "xray.yaml"
    cfg.write_text(
        f"name: xray\ndata: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        "model: {name: small_cnn, args: {width: 8, depth: 2}, ensemble: 2}\n"
        "train: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: xray, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / "xray"


@pytest.fixture(scope="module")
def run(tmp_path_factory, png_folder) -> Path:
    return _train(tmp_path_factory.mktemp("serve"), png_folder)


def _wait_ready(client) -> None:
    deadline = time.monotonic() + 60
    while client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(run):
    with TestClient(create_app([str(run)], max_batch=8, threads=1)) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def pngs(png_folder) -> list[Path]:
    return sorted(png_folder.rglob("*.png"))[:5]


def _raw(run: Path, files: list[Path]) -> np.ndarray:
    """The graph's raw input for files, as the run's modality reads them."""
    info = json.loads((run / "run.json").read_text())
    raw, _, _ = get_modality(info["modality"]).read_raw(info["preprocessing"], files, False)
    return raw.numpy()


def _v2(raw: np.ndarray, *, name: str = "image", datatype: str = "FP32", shape=None, nested: bool = False) -> dict:
    data = raw.tolist() if nested else raw.reshape(-1).tolist()
    return {"id": "r1", "inputs": [{"name": name, "datatype": datatype,
                                    "shape": list(raw.shape) if shape is None else shape, "data": data}]}  # fmt: skip


def _one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    line = response.json()["error"]
    assert line and "\n" not in line and "Traceback" not in line
    return line


def test_health_metadata_models_and_card(client, run):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["name"] == "biomx"
    meta = client.get("/v2/models/xray").json()
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "std"]  # an ensemble has a std
    assert client.get("/v2/models/xray/ready").json() == {"name": "xray", "ready": True}
    (entry,) = client.get("/models").json()["models"]
    assert entry["classes"] == ["normal", "pneumonia"] and entry["ensemble"] == 2
    assert "auroc" in entry["test_metrics"]
    card = client.get("/models/xray/card").json()
    recorded = json.loads((run / "test_metrics.json").read_text(), parse_constant=lambda c: None)
    assert card["test"]["metrics"]["auroc"] == recorded["metrics"]["auroc"]
    assert card["model"]["name"] == "small_cnn" and card["data"]["n"] == 160
    assert "path" not in card["data"]  # where the training data lay is not published
    assert len(card["model_card"]["sections"]) >= 8  # the run's model_card.json (biomx.card)
    for url in ("/v2/models/nope", "/v2/models/nope/ready", "/models/nope/card"):
        assert "not served here" in _one_line_error(client.get(url), 404)
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and 'id="card"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    assert "/v2/models/{name}/infer" in client.get("/openapi.json").json()["paths"]


def test_v2_infer_equals_the_python_predictor(client, run, pngs):
    raw = _raw(run, pngs)
    expected = load(run).predict_proba(pngs)[:, 1]
    answer = client.post("/v2/models/xray/infer", json=_v2(raw)).json()
    assert answer["model_name"] == "xray" and answer["id"] == "r1"
    preds, std = answer["outputs"]
    assert preds["shape"] == [len(pngs)] and preds["datatype"] == "FP32"
    np.testing.assert_allclose(preds["data"], expected, atol=1e-5)
    assert std["name"] == "std" and len(std["data"]) == len(pngs) and min(std["data"]) >= 0
    nested = client.post("/v2/models/xray/infer", json=_v2(raw, nested=True)).json()
    assert nested["outputs"][0]["data"] == preds["data"]  # nested lists read as the flat ones


def test_upload_png_and_dicom_answer_per_file(client, run, pngs, dicom_folder):
    dcm = sorted(dicom_folder.rglob("*.dcm"))[0]
    files = [("files", ("../../secret/dir/" + p.name, p.read_bytes(), "image/png")) for p in pngs[:2]]
    files.append(("files", ("C:\\scans\\" + dcm.name, dcm.read_bytes(), "application/dicom")))
    answer = client.post("/models/xray/predict", files=files).json()
    results = answer["results"]
    assert [r["name"] for r in results] == [pngs[0].name, pngs[1].name, dcm.name]  # base names only
    expected = load(run).predict_proba([*pngs[:2], dcm])
    np.testing.assert_allclose([[r["prob_normal"], r["prob_pneumonia"]] for r in results], expected, atol=1e-5)
    assert [r["label"] for r in results] == list(load(run).predict([*pngs[:2], dcm]))
    assert set(results[0]["uncertainty"]) == {"prob_pneumonia_std"}
    image = Image.open(io.BytesIO(base64.b64decode(results[0]["explanation_png"])))
    assert image.mode == "RGB" and image.size[0] > 0
    quiet = client.post("/models/xray/predict", files=files[:1], data={"explain": "0"}).json()
    assert "explanation_png" not in quiet["results"][0]


def test_bad_inputs_are_one_line_4xx(client, run, pngs):
    raw = _raw(run, pngs[:2])
    post = lambda body: client.post("/v2/models/xray/infer", json=body)  # noqa: E731
    assert "not valid JSON" in _one_line_error(client.post("/v2/models/xray/infer", content=b"{oops"), 400)
    assert "datatype" in _one_line_error(post(_v2(raw.astype(np.int64), datatype="INT64")), 400)
    assert "shape" in _one_line_error(post(_v2(raw, shape=[2, 3, 28, 28])), 400)  # 3 channels for a grey model
    assert "shape" in _one_line_error(post(_v2(raw, shape=[2, 28, 28])), 400)
    assert "values" in _one_line_error(post(_v2(raw, shape=[2, 1, 28, 27])), 400)
    assert "name" in _one_line_error(post(_v2(raw, name="pixels")), 400)
    assert "numbers" in _one_line_error(post({"inputs": [{"name": "image", "datatype": "FP32",
                                                          "shape": [1, 1, 1, 2], "data": ["a", "b"]}]}), 400)  # fmt: skip
    nan = json.dumps(_v2(raw[:1, :, :1, :2])).replace("[", "[NaN, ", 1).replace("2]", "3]", 1)
    assert _one_line_error(client.post("/v2/models/xray/infer", content=nan.encode()), 400)
    assert "inputs" in _one_line_error(post({"inputs": []}), 400)
    assert "rows" in _one_line_error(post(_v2(raw[:1], shape=[65, 1, 28, 28])), 413)  # max_batch 8 * 8
    corrupt = client.post("/models/xray/predict", files=[("files", ("/home/me/broken.png", b"\x89PNG not", "image/png"))])
    line = _one_line_error(corrupt, 400)
    assert "broken.png" in line and "biomx-upload" not in line and "/home/me" not in line
    pasted = client.post("/models/xray/predict", data={"text": "CCO\n", "suffix": ".smi"})
    _one_line_error(pasted, 400)  # text is no image
    assert "suffix" in _one_line_error(client.post("/models/xray/predict", data={"text": "CCO", "suffix": "/etc"}), 400)
    assert _one_line_error(client.post("/models/xray/predict", json={"x": 1}), 400)
    assert _one_line_error(client.post("/models/xray/predict", files={"nothing": ("", b"")}), 400)
    assert "not served here" in _one_line_error(client.post("/v2/models/nope/infer", json=_v2(raw)), 404)


def test_limits_timeouts_metrics_and_quiet_logs(run, pngs, caplog):
    raw = _raw(run, pngs[:1])
    with TestClient(create_app([str(run)], max_request_mb=0.05, timeout_s=1e-9, threads=1)) as c:
        _wait_ready(c)
        big = json.dumps(_v2(np.zeros((8, 1, 28, 28), np.float32) + 0.123456789)).encode()  # > 50 KiB
        assert "limit" in _one_line_error(c.post("/v2/models/xray/infer", content=big), 413)
        chunks = (big[i:i + 1000] for i in range(0, len(big), 1000))  # no Content-Length: counted as it streams
        _one_line_error(c.post("/v2/models/xray/infer", content=chunks), 413)
        late = c.post("/v2/models/xray/infer", json=_v2(raw))
        assert "timeout" in _one_line_error(late, 503) and late.headers["retry-after"] == "1"
    with TestClient(create_app([str(run)], threads=1)) as c:
        _wait_ready(c)
        with caplog.at_level(logging.INFO, logger="biomx.serve"):
            files = [("files", ("patient-jane-doe.png", pngs[0].read_bytes(), "image/png"))]
            assert c.post("/models/xray/predict", files=files).status_code == 200
            for _ in range(3):
                assert c.post("/v2/models/xray/infer", json=_v2(raw)).status_code == 200
            c.post("/v2/models/xray/infer", content=b"[")
        text = c.get("/metrics").text
    assert "jane" not in caplog.text and "/models/{name}/predict 200" in caplog.text
    assert _metric(text, 'biomx_requests_total{route="/v2/models/{name}/infer",status="200"}') == 3
    assert _metric(text, 'biomx_requests_total{route="/v2/models/{name}/infer",status="400"}') == 1
    assert _metric(text, 'biomx_errors_total{kind="client",route="/v2/models/{name}/infer"}') == 1
    assert _metric(text, 'biomx_batch_size_sum{model="xray"}') == 4  # the upload's row and three v2 rows
    assert _metric(text, 'biomx_request_seconds_count{route="/models/{name}/predict"}') == 1
    assert 'biomx_queue_depth{model="xray"} 0.0' in text


def _metric(text: str, series: str) -> float:
    match = re.search(re.escape(series) + r" (\S+)", text)
    assert match, f"{series} not in /metrics"
    return float(match.group(1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_batches_concurrent_clients(run, png_folder, tmp_path):
    files = sorted(png_folder.rglob("*.png"))[:32]
    raw = _raw(run, files)
    expected = load(run).predict_proba(files)[:, 1]
    port = _free_port()
    code = (f"from biomx.serve.server import serve; serve([{str(run)!r}], port={port}, max_batch=16, "
            "max_wait_ms=100, threads=1)")  # a wide window: the clients' requests meet in it
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)

        def ask(i: int) -> float:
            response = httpx.post(f"{url}/v2/models/xray/infer", json=_v2(raw[i:i + 1]), timeout=30)
            assert response.status_code == 200, response.text
            return response.json()["outputs"][0]["data"][0]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(len(files))))
        np.testing.assert_allclose(answers, expected, atol=1e-5)  # each client got its own row back
        text = httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    calls, rows = _metric(text, 'biomx_batch_size_count{model="xray"}'), _metric(text, 'biomx_batch_size_sum{model="xray"}')
    assert rows == len(files) and calls < rows, f"{rows} rows in {calls} engine calls: nothing was batched"


def test_batcher_joins_only_rows_of_one_shape_and_answers_each_its_own():
    calls: list[tuple[int, ...]] = []

    def engine(rows: np.ndarray):  # row sums: any mix-up of rows between requests shows
        calls.append(rows.shape)
        return rows.reshape(len(rows), -1).sum(1), None

    async def scenario():
        batcher = MicroBatcher(engine, max_batch=4, max_wait_ms=50, max_queue_rows=16)
        shapes = [(1, 2, 2), (2, 2, 2), (1, 3, 3), (3, 2, 2), (6, 2, 2)]  # the last is over max_batch: split
        inputs = [np.random.default_rng(i).random(s).astype(np.float32) for i, s in enumerate(shapes)]
        answers = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        with pytest.raises(QueueFull):  # more rows waiting than the queue holds: the app answers 503
            await asyncio.gather(*(batcher.submit(np.zeros((5, 2, 2), np.float32)) for _ in range(4)))
        batcher.close()
        return inputs, answers

    inputs, answers = asyncio.run(scenario())
    for x, (got, std) in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(got, x.reshape(len(x), -1).sum(1), rtol=1e-6)
        assert std is None
    # The first two requests share a call; the 3x3 one goes alone; the next 3 rows cannot take the
    # 6-row request beside them (over max_batch), which is split into calls of at most 4 rows.
    assert calls[:5] == [(3, 2, 2), (1, 3, 3), (3, 2, 2), (4, 2, 2), (2, 2, 2)]


def test_pasted_sequences_equal_the_python_predictor(tmp_path_factory):
    """Pasted text goes through the run's own reader too (here a sequence run and FASTA text)."""
    dna = Path(__file__).parent / "data" / "dna_tf_binding"
    root = tmp_path_factory.mktemp("seq")
    for src, dst in (("sample.fa", "oct4.fa"), ("sample2.fa", "mafk.fa")):
        (root / dst).write_text("\n".join((dna / src).read_text().splitlines()[:120]) + "\n")
    cfg = root / "seq.yaml"
    cfg.write_text(
        f"name: seq\ndata: {{modality: sequence, source: fasta, path: {root}, "
        "sequence: {files: {Oct4: oct4.fa, Mafk: mafk.fa}}}\nmodel: {name: deepsea, args: {width: 8}}\n"
        "task: {classes: [Mafk, Oct4]}\ntrain: {epochs: 1, batch_size: 32, progress: false}\n"
        f"eval: {{bootstrap: 0, explain: 0}}\noutput: {{dir: {root / 'runs'}, name: seq, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    run = root / "runs" / "seq"
    text = "\n".join((root / "oct4.fa").read_text().splitlines()[:8]) + "\n"  # four records
    (root / "four.fa").write_text(text)
    with TestClient(create_app([str(run)], threads=1)) as c:
        _wait_ready(c)
        assert c.get("/v2/models/seq").json()["inputs"][0]["name"] != "image"
        results = c.post("/models/seq/predict", data={"text": text, "suffix": ".fa"}).json()["results"]
    model = load(run)
    assert [r["name"] for r in results] == [line[1:] for line in text.splitlines()[::2]]
    np.testing.assert_allclose([[r[f"prob_{k}"] for k in model.classes_] for r in results],
                               model.predict_proba(root / "four.fa"), atol=1e-5)  # fmt: skip
    assert [r["label"] for r in results] == list(model.predict(root / "four.fa"))
