"""The ASGI middleware around every request: the body-size limit, metrics, one log line, and the
last catch for bugs.

The body limit is checked twice: from Content-Length before anything is read, and while the body
streams in (a client may lie or send chunks). The log line holds the method, the route template,
the status, the latency and the body size only: never a file name, a path parameter's free text
or anything read from an upload. An exception that escapes a route is a bug in biomx: it is logged
by type and route only (its message may quote an input) and answered with a generic 500.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.exceptions import HTTPException

from biomx.serve.metrics import Metrics

log = logging.getLogger("biomx.serve")


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body: over the limit of {limit / 2**20:g} MB (serve --max-request-mb)")


class Guard:
    """Pure ASGI middleware (no buffering of the body, so the limit holds while streaming)."""

    def __init__(self, app: Any, *, max_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, size = time.perf_counter(), [0], [0]

        async def counting_receive() -> dict:
            message = await receive()
            size[0] += len(message.get("body", b""))
            if size[0] > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        async def watching_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_bytes:
                status[0] = 413
                await _send_json(send, 413, str(BodyTooLarge(self.max_bytes).detail))
            else:
                await self.app(scope, counting_receive, watching_send)
        except Exception as e:  # a bug: no message, no traceback text in the log (they may quote inputs)
            log.error("unexpected %s on %s %s", type(e).__name__, scope.get("method"), _route(scope))
            if status[0] == 0:
                status[0] = 500
                await _send_json(send, 500, "internal error; the server log names the error type")
        finally:
            seconds = time.perf_counter() - start
            route = _route(scope)
            self.metrics.observe_request(route, status[0] or 500, seconds)
            log.info("%s %s %d %.1fms %dB", scope.get("method"), route, status[0], seconds * 1000, size[0])


def _content_length(scope: dict) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _route(scope: dict) -> str:
    """The matched route's template ("/v2/models/{name}/infer"); "unmatched" for unknown paths."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


async def _send_json(send: Any, status: int, line: str) -> None:
    body = json.dumps({"error": line}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
