"""`biomx serve RUN...`: the app under uvicorn, blocking until interrupted."""

from __future__ import annotations

import logging

from biomx.serve.app import create_app


def serve(runs: list[str], *, host: str = "127.0.0.1", port: int = 8000, engine: str = "torch", max_batch: int = 32,
          max_wait_ms: float = 5, timeout_s: float = 30, max_request_mb: float = 50,
          threads: int | None = None, drift_log: str | None = None) -> None:  # fmt: skip
    """Serve `runs` on http://host:port until interrupted. The engines open before the server
    listens, so a run that cannot be served stops it at once with one line. `threads`: PyTorch's
    and ONNX Runtime's intra-op threads per model (None: their defaults; see `create_app`).

    Raises:
        BiomxError: a folder that is not a run, an engine that cannot open (e.g. not exported yet).
    """
    import uvicorn  # imported here: `biomx --help` need not load the server stack

    app = create_app(runs, engine=engine, max_batch=max_batch, max_wait_ms=max_wait_ms, timeout_s=timeout_s,
                     max_request_mb=max_request_mb, threads=threads, drift_log=drift_log)  # fmt: skip
    models = app.state.served.models
    models.load_all()
    failed = [m for m in models.models.values() if m.error]
    if failed:
        from biomx.errors import BiomxError

        raise BiomxError(f"{failed[0].run_dir}: cannot be served: {failed[0].error}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn's own access log prints paths and client addresses; ours prints routes and sizes only.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
