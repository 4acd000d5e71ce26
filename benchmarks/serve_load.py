"""Load test of `biomx serve`: a real server process on localhost, many concurrent clients, a share
of malformed requests.

2,000 requests from 16 concurrent clients (threads, one httpx client each) against a run (a tiny
small_cnn on 28x28 chest X-ray PNGs is trained when none is given). About 10% are malformed, a
mixture of: bad JSON, a wrong shape, a wrong datatype, a corrupt PNG upload. The valid ones are
KServe v2 JSON inferences of one image (most) and PNG uploads through the upload route (with
an explanation). Checks: no 5xx at all, every valid request answered 200 with its own image's
prediction (equal to `biomx.load(run).predict_proba`), every malformed one a 4xx. Reports p50/p99
latency, throughput, the engine's rows per call (micro-batching, from /metrics), and the server's
resident memory (VmRSS from /proc) sampled through the run (after 200 warm-up requests): the first
quarter's mean against the last quarter's (flat = no leak).

    .venv/bin/python benchmarks/serve_load.py                      # trains a tiny run (~15 s)
    .venv/bin/python benchmarks/serve_load.py --run runs/xray --requests 5000 --clients 32
    .venv/bin/python benchmarks/serve_load.py --threads 0   # PyTorch's default threads in the server

Prints a JSON summary and writes it to benchmarks/results/serve_load.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = "{name: small_cnn, args: {width: 8, depth: 2}}"


def tiny_run(work: Path) -> Path:
    """A 1-epoch small_cnn on 160 exported chest X-ray PNGs."""
    from biomx.cli import main
    from biomx.modalities.image.starter_data import export_images

    pngs = work / "png"
    export_images("pneumoniamnist", pngs, "png", limit=160)
    cfg = work / "xray.yaml"
    cfg.write_text(f"name: xray\ndata: {{source: folder, path: {pngs}, image: {{size: [28, 28]}}}}\nmodel: {MODEL}\n"
                   "train: {epochs: 1, batch_size: 32, progress: false}\neval: {bootstrap: 0, explain: 0}\n"
                   f"output: {{dir: {work / 'runs'}, name: xray, tensorboard: false}}\n")  # fmt: skip
    assert main(["train", str(cfg)]) == 0
    return work / "runs" / "xray"


def inputs_of(run: Path, n: int) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """n of the run's own image files (a run trained on a folder of PNGs), their raw graph inputs
    and the PyTorch graph's predictions for them (tests/test_serve.py checks those against
    `biomx.load(run)`)."""
    from biomx.export.engines import open_engine
    from biomx.modalities import get_modality

    info = json.loads((run / "run.json").read_text())
    source = Path(json.loads((run / "data.json").read_text())["path"])
    files = sorted(source.rglob("*.png"))[:n]
    raw, _, _ = get_modality(info["modality"]).read_raw(info["preprocessing"], files, False)
    return files, raw.numpy(), open_engine(run, "torch").run(raw)[0]


def v2_body(row: np.ndarray, **change) -> dict:
    tensor = {"name": "image", "datatype": "FP32", "shape": [1, *row.shape], "data": row.reshape(-1).tolist()}
    return {"inputs": [{**tensor, **change}]}


def plan(n: int, malformed: float, n_images: int, seed: int) -> list[tuple[str, int]]:
    """(kind, image index) per request, shuffled: valid v2 / upload, or one of four malformed kinds."""
    rng = random.Random(seed)
    bad = ("bad_json", "wrong_shape", "wrong_dtype", "corrupt_png")
    jobs = []
    for i in range(n):
        if i < round(n * malformed):
            kind = bad[i % len(bad)]
        else:
            kind = "upload" if rng.random() < 0.2 else "v2"
        jobs.append((kind, rng.randrange(n_images)))
    rng.shuffle(jobs)
    return jobs


def send(client: httpx.Client, url: str, kind: str, row: np.ndarray, png: bytes) -> httpx.Response:
    """`url` is the model's: http://host:port/.../<name> without the route's tail."""
    base, name = url.rsplit("/", 1)
    infer = f"{base}/v2/models/{name}/infer"
    upload = f"{base}/models/{name}/predict"
    if kind == "v2":
        return client.post(infer, json=v2_body(row))
    if kind == "upload":
        return client.post(upload, files=[("files", ("image.png", png, "image/png"))])
    if kind == "bad_json":
        return client.post(infer, content=json.dumps(v2_body(row))[:-7].encode(), headers={"content-type": "application/json"})
    if kind == "wrong_shape":
        return client.post(infer, json=v2_body(row, shape=[1, 3, *row.shape[1:]]))
    if kind == "wrong_dtype":
        return client.post(infer, json=v2_body(row, datatype="INT64", data=[int(v > 0.5) for v in row.reshape(-1)]))
    return client.post(upload, files=[("files", ("broken.png", png[: len(png) // 3], "image/png"))])


def answer_ok(kind: str, response: httpx.Response, expected: np.ndarray) -> bool:
    """A valid request's answer is its own image's prediction."""
    if kind == "v2":
        got = np.asarray(response.json()["outputs"][0]["data"])
        return got.shape == np.ravel(expected).shape and np.allclose(got, np.ravel(expected), atol=1e-4)
    (result,) = response.json()["results"]
    return result.get("name") == "image.png" and bool(result.get("explanation_png"))


def rss_sampler(pid: int, samples: list[tuple[float, float]], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            samples.append((time.monotonic(), kb / 1024))
        except (OSError, AttributeError):
            pass
        stop.wait(0.1)


def start_server(run: Path, engine: str, max_batch: int, threads: int | None, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from biomx.serve.server import serve; serve([{str(run)!r}], port={port}, engine={engine!r}, max_batch={max_batch}, threads={threads})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.2)


def metric(text: str, series: str) -> float:
    match = re.search(re.escape(series) + r" (\S+)", text)
    return float(match.group(1)) if match else float("nan")


def run_load(url: str, jobs: list[tuple[str, int]], raw: np.ndarray, pngs: list[bytes], expected: np.ndarray,
             clients: int) -> list[dict]:  # fmt: skip
    local = threading.local()

    def one(job: tuple[str, int]) -> dict:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        kind, i = job
        start = time.perf_counter()
        response = send(local.client, url, kind, raw[i], pngs[i])
        seconds = time.perf_counter() - start
        ok = response.status_code == 200 and answer_ok(kind, response, expected[i]) if kind in ("v2", "upload") else None
        return {"kind": kind, "status": response.status_code, "seconds": seconds, "answer_ok": ok}

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, jobs))


def summarise(results: list[dict], wall: float, rss: list[tuple[float, float]], before: str, after: str,
              name: str) -> dict:  # fmt: skip
    """The JSON summary; engine calls and rows count the measured requests only (after - before)."""
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    valid = [r for r in results if r["kind"] in ("v2", "upload")]
    bad = [r for r in results if r["kind"] not in ("v2", "upload")]
    lat = np.array([r["seconds"] for r in valid]) * 1000
    quarter = max(1, len(rss) // 4)
    first, last = np.mean([m for _, m in rss[:quarter]]), np.mean([m for _, m in rss[-quarter:]])
    count, total = f'biomx_batch_size_count{{model="{name}"}}', f'biomx_batch_size_sum{{model="{name}"}}'
    calls, rows = metric(after, count) - metric(before, count), metric(after, total) - metric(before, total)
    return {
        "requests": len(results), "valid": len(valid), "malformed": len(bad), "status_counts": statuses,
        "server_errors_5xx": sum(r["status"] >= 500 for r in results),
        "valid_not_200": sum(r["status"] != 200 for r in valid),
        "valid_wrong_answer": sum(r["answer_ok"] is False for r in valid),
        "malformed_not_4xx": sum(not 400 <= r["status"] < 500 for r in bad),
        "latency_ms_valid": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                             "max": float(lat.max())},
        "latency_ms_v2_p50": float(np.percentile([r["seconds"] * 1000 for r in valid if r["kind"] == "v2"], 50)),
        "latency_ms_upload_p50": float(np.percentile([r["seconds"] * 1000 for r in valid if r["kind"] == "upload"] or [0], 50)),
        "throughput_rps": len(results) / wall, "wall_s": wall,
        "engine_calls": calls, "engine_rows": rows, "rows_per_engine_call": rows / calls if calls else None,
        "rss_mb": {"first_quarter_mean": float(first), "last_quarter_mean": float(last),
                   "max": float(max(m for _, m in rss)), "samples": len(rss), "growth_pct": float((last - first) / first * 100)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: train a tiny image run)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--malformed", type=float, default=0.10)
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads per model; 0: PyTorch's default")
    parser.add_argument("--warmup", type=int, default=200, help="requests before the measured ones (not counted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="biomx-serve-load-"))
    run = args.run.resolve() if args.run else tiny_run(work)
    files, raw, expected = inputs_of(run, 64)
    pngs = [f.read_bytes() for f in files]
    threads = args.threads or None
    proc, url = start_server(run, args.engine, args.max_batch, threads, work / "serve.log")
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_sampler, args=(proc.pid, samples, stop), daemon=True)
    try:  # warm up (allocator pools, first uploads and explanations), then measure
        model_url = f"{url}/{run.name}"
        run_load(model_url, plan(args.warmup, args.malformed, len(files), args.seed + 1), raw, pngs, expected, args.clients)
        before = httpx.get(f"{url}/metrics").text
        sampler.start()
        jobs = plan(args.requests, args.malformed, len(files), args.seed)
        start = time.perf_counter()
        results = run_load(model_url, jobs, raw, pngs, expected, args.clients)
        wall = time.perf_counter() - start
        stop.set()
        sampler.join()
        metrics_text = httpx.get(f"{url}/metrics").text
    finally:
        stop.set()
        proc.terminate()
        proc.wait(timeout=20)
    summary = {"engine": args.engine, "clients": args.clients, "max_batch": args.max_batch, "threads": threads,
               "warmup_requests": args.warmup,
               **summarise(results, wall, samples, before, metrics_text, run.name)}  # fmt: skip
    text = json.dumps(summary, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    ok = not summary["server_errors_5xx"] and not summary["valid_not_200"] and not summary["valid_wrong_answer"]
    sys.exit(0 if ok and not summary["malformed_not_4xx"] else 1)


if __name__ == "__main__":
    main()
