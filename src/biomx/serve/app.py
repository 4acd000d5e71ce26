"""The FastAPI app: Open Inference Protocol (KServe v2) REST routes, the upload route, the model
list and cards, the web page, Prometheus metrics, OpenAPI docs at /docs.

Every answer to a mistake is `{"error": "<one line>"}` with a 4xx status; a full queue or a
request over `timeout_s` is a 503 with Retry-After. Nothing here knows a modality or a task by
name: uploads are read by the run's modality (`read_raw`), answers are the task's columns.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from biomx.drift.log import DriftLog
from biomx.errors import BiomxError
from biomx.serve.answers import explanations, rows_answer
from biomx.serve.batcher import QueueFull
from biomx.serve.guard import Guard
from biomx.serve.metrics import Metrics
from biomx.serve.models import ModelSet, ServedModel
from biomx.serve.uploads import Upload, display_name, read_uploads, safe_suffix, text_upload
from biomx.serve.v2 import TooLarge, output_tensors, parse_request
from biomx.version import __version__

STATIC = Path(__file__).parent / "static"
RETRY_AFTER = {"Retry-After": "1"}
INFER_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"],
    "properties": {"id": {"type": "string"}, "inputs": {"type": "array", "items": {
        "type": "object", "required": ["name", "shape", "datatype", "data"],
        "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                       "datatype": {"type": "string", "enum": ["FP32", "INT64"]},
                       "data": {"type": "array", "items": {}}}}}}}}}}  # fmt: skip
UPLOAD_BODY = {"content": {"multipart/form-data": {"schema": {
    "type": "object",
    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                   "text": {"type": "string"}, "suffix": {"type": "string"},
                   "explain": {"type": "string", "enum": ["1", "0"]}}}}}}  # fmt: skip


def error(status: int, line: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": line}, status_code=status, headers=headers)


class Unavailable(Exception):
    """A model still loading, or one that could not be loaded (503)."""


@dataclass
class Served:
    """What the routes share: the models, the metrics and the per-request limits."""

    models: ModelSet
    metrics: Metrics
    max_rows: int
    timeout_s: float

    def get(self, name: str) -> ServedModel:
        """A model by name: 404 when not served here (whether loaded or not)."""
        model = self.models.models.get(name)
        if model is None:
            raise HTTPException(404, f"model {name[:80]!r}: not served here; GET /models lists the served models")
        return model

    def ready(self, name: str) -> ServedModel:
        """A model that can run now: 503 while it loads or when it could not be loaded."""
        model = self.get(name)
        if not model.ready:
            raise Unavailable(f"model {name!r} cannot be served: {model.error}" if model.error
                              else f"model {name!r} is still loading; retry shortly")  # fmt: skip
        return model

    async def predict(self, model: ServedModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return await asyncio.wait_for(model.batcher.submit(rows), self.timeout_s)


def create_app(runs: list[str], *, engine: str = "torch", max_batch: int = 32, max_wait_ms: float = 5,
               timeout_s: float = 30, max_request_mb: float = 50, threads: int | None = None,
               drift_log: str | Path | None = None) -> FastAPI:  # fmt: skip
    """The app serving `runs` (run folders; each model is named after its folder). Engines load in
    the background when the app starts; `GET /v2/health/ready` says when all have. `threads`: the
    PyTorch and ONNX Runtime intra-op threads of each model's engine (None: their defaults, one per
    core; 1 is far faster for small models on a machine whose cores are busy with other work).
    `drift_log`: a JSON-lines file getting each engine call's input statistics and predictions
    (`biomx drift RUN --from-log FILE`).

    Raises:
        BiomxError: a folder that is not a run, two runs with one folder name.
    """
    metrics = Metrics()
    models = ModelSet(runs, engine=engine, max_batch=max_batch, max_wait_ms=max_wait_ms, metrics=metrics,
                      threads=threads, drift_log=DriftLog(drift_log) if drift_log else None)  # fmt: skip
    ctx = Served(models, metrics, max_rows=max_batch * 8, timeout_s=timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models.load_in_background()
        yield
        models.close()

    app = FastAPI(title="biomx serve", version=__version__, lifespan=lifespan,
                  description="Trained biomx runs: Open Inference Protocol (KServe v2) REST, uploads, model cards.")  # fmt: skip
    app.state.served = ctx
    app.add_middleware(Guard, max_bytes=int(max_request_mb * 2**20), metrics=metrics)
    add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_v2_routes(app, ctx)
    add_site_routes(app, ctx)
    return app


def add_v2_routes(app: FastAPI, ctx: Served) -> None:
    """The Open Inference Protocol (KServe v2) REST routes."""

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready() -> JSONResponse:
        ok = ctx.models.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "biomx", "version": __version__, "extensions": []}

    @app.get("/v2/models/{name}", tags=["v2"])
    async def model_metadata(name: str) -> dict[str, Any]:
        return ctx.get(name).metadata()

    @app.get("/v2/models/{name}/ready", tags=["v2"])
    async def model_ready(name: str) -> JSONResponse:
        ok = ctx.get(name).ready
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    @app.post("/v2/models/{name}/infer", tags=["v2"], openapi_extra={"requestBody": INFER_BODY})
    async def infer(name: str, request: Request) -> dict[str, Any]:
        """Rows of the graph's input tensor (see the model metadata) -> predictions (and std)."""
        model = ctx.ready(name)
        body = await request.body()
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BiomxError(f"request body: not valid JSON ({getattr(e, 'msg', 'not UTF-8')})") from None
        assert model.engine is not None
        rows, request_id = parse_request(payload, model.engine.loaded.plan.input, ctx.max_rows)
        preds, std = await ctx.predict(model, rows)
        return {"model_name": name, "model_version": "1", "id": request_id,
                "outputs": output_tensors(preds, std)}  # fmt: skip


def add_site_routes(app: FastAPI, ctx: Served) -> None:
    """The web page, the upload route, the model list and cards, the metrics."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/models/{name}/predict", tags=["uploads"], openapi_extra={"requestBody": UPLOAD_BODY})
    async def predict(name: str, request: Request) -> dict[str, Any]:
        """Files (form field `files`, one or more) or pasted text (`text`, with `suffix`: what it is)."""
        model = ctx.ready(name)
        assert model.engine is not None
        loaded = model.engine.loaded
        uploads, explain = await read_form(request, ctx.max_rows)
        read = asyncio.to_thread(read_uploads, loaded.modality, loaded.info["preprocessing"], uploads)
        raw, names = await asyncio.wait_for(read, ctx.timeout_s)
        if len(raw) > ctx.max_rows:
            raise TooLarge(f"the uploads hold {len(raw)} inputs; at most {ctx.max_rows} per request")
        if not len(raw):
            raise BiomxError("the uploads hold no inputs")
        preds, std = await ctx.predict(model, raw.numpy())
        answer = rows_answer(loaded.task, preds, std, names)
        if explain:
            images = await asyncio.wait_for(model.batcher.call(explanations, loaded, raw), ctx.timeout_s)
            for row, image in zip(answer, images, strict=False):
                row["explanation_png"] = image
        return {"model_name": name, "engine": model.engine_name, "results": answer}

    @app.get("/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"models": [m.summary() for m in ctx.models.models.values()]}

    @app.get("/models/{name}/card", tags=["models"])
    async def card(name: str) -> dict[str, Any]:
        return ctx.get(name).card()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(ctx.metrics.render(), media_type=ctx.metrics.content_type)


async def read_form(request: Request, max_files: int) -> tuple[list[tuple[Upload, str]], bool]:
    """The uploads of a multipart form (files, or pasted text with its suffix), and whether to explain."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise BiomxError("request body: send multipart/form-data with 'files' or 'text' (and 'suffix')")
    async with request.form(max_files=max_files, max_fields=16, max_part_size=2**20 * 8) as form:
        uploads: list[tuple[Upload, str]] = []
        for _key, value in form.multi_items():
            if isinstance(value, str):
                continue
            name = display_name(value.filename, f"file{len(uploads) + 1}")
            uploads.append((Upload(name, await value.read()), safe_suffix(value.filename or "")))
        text = form.get("text")
        if isinstance(text, str) and text.strip():
            uploads.append(text_upload(text, form.get("suffix")))
        explain = form.get("explain", "1") not in ("0", "false", "no")
    if not uploads:
        raise BiomxError("request body: no files and no text; send files in 'files' or text in 'text'")
    return uploads, explain


def add_error_handlers(app: FastAPI) -> None:
    """Mistakes as one-line JSON errors; a full queue or a timeout as 503 with Retry-After."""

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(BiomxError)
    async def user_mistake(request: Request, exc: BiomxError) -> JSONResponse:
        return error(400, " ".join(str(exc).split()) or type(exc).__name__)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, " ".join(str(exc.detail).split()), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return error(503, "the model's queue is full; retry shortly", RETRY_AFTER)

    @app.exception_handler(asyncio.TimeoutError)
    async def timed_out(request: Request, exc: asyncio.TimeoutError) -> JSONResponse:
        return error(503, "the request took longer than the server's timeout; retry shortly", RETRY_AFTER)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return error(503, str(exc), RETRY_AFTER)
