"""`biomx serve`: trained runs behind an HTTP server (FastAPI).

The Open Inference Protocol (KServe v2) REST routes take the graph's raw input tensor as JSON; a
friendly upload route takes files or pasted text and reads them with the run's own modality; a
web page, a model card, Prometheus metrics and OpenAPI docs come with it. Concurrent requests for
one model are micro-batched. Every run is served through `biomx.export.engines.open_engine`, so
the server knows modalities and tasks only through their protocols.
"""
