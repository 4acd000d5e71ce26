"""Prometheus metrics of one app (its own registry, so two apps in one process never mix counts)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests by route and status, latency, errors, batch sizes and queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("biomx_requests", "HTTP requests by route template and status code",
                                ["route", "status"], registry=self.registry)  # fmt: skip
        self.latency = Histogram("biomx_request_seconds", "Request latency by route template",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.errors = Counter("biomx_errors", "Requests answered with a 4xx or 5xx, by route and class",
                              ["route", "kind"], registry=self.registry)  # fmt: skip
        self.batch_size = Histogram("biomx_batch_size", "Rows per engine call, by model",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)  # fmt: skip
        self.queue_depth = Gauge("biomx_queue_depth", "Rows waiting for the engine, by model",
                                 ["model"], registry=self.registry)  # fmt: skip

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, "client" if status < 500 else "server").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
