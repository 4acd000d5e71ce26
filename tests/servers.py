"""Helpers for the tests that call biomx from outside Python (Node.js, a browser): a tiny trained
and exported image run, and a real `biomx serve` process on a free port.

A real process, not FastAPI's test client: the callers under test (node, Chromium) reach the
server only over a socket, as a user's would.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from biomx.cli import main
from biomx.export.run_export import export_run

READY_TIMEOUT_S = 60.0


def train_image_run(root: Path, png_folder: Path, name: str, ensemble: int = 1, batch_size: int = 32) -> Path:
    """A tiny 1-epoch small_cnn on the 28x28 chest X-rays in a folder (seconds on a CPU)."""
    cfg = root / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\n"
        f"data: {{source: folder, path: {png_folder}, image: {{size: [28, 28]}}}}\n"
        f"model: {{name: small_cnn, args: {{width: 8, depth: 2}}, ensemble: {ensemble}}}\n"
        f"train: {{epochs: 1, batch_size: {batch_size}, progress: false}}\n"
        "eval: {bootstrap: 0, explain: 0}\n"
        f"output: {{dir: {root / 'runs'}, name: {name}, tensorboard: false}}\n"
    )
    assert main(["train", str(cfg)]) == 0
    return root / "runs" / name


def export(run_dir: Path) -> Path:
    """What `biomx export RUN` writes (every format, each checked against PyTorch): RUN/export/."""
    export_run(run_dir, echo=lambda line: None)
    return run_dir / "export"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def serve(run_dir: Path, *args: str, log: Path) -> Iterator[str]:
    """`python -m biomx serve RUN --port P` until the block ends; yields its base URL once
    /v2/health/ready answers 200. Its console goes to `log`, quoted when it fails to start."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "biomx", "serve", str(run_dir), "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "never became ready"
                raise AssertionError(f"biomx serve {state}:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
