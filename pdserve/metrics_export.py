"""The Prometheus side every process's metrics share: one registry per instance, its text
rendering, and an optional /metrics HTTP endpoint on a daemon thread.

Each instance owns its own CollectorRegistry, never prometheus_client's global REGISTRY, so
several routers or workers may live in one process (tests) without clashing names.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import (
    CONTENT_TYPE_LATEST,
    generate_latest,
    start_http_server,
)


class MetricsExporter:
    """Owns `registry` and the HTTP server serving it (at most one, from `serve_http` until
    `close`). Subclasses register their metrics in `registry` in their __init__."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of `registry` and its content type. Thread-safe:
        collects at call time and modifies nothing."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def serve_http(self, host: str, port: int) -> int:
        """Serves `registry` at http://host:port/ (any path) on a daemon thread and returns the
        bound port (port 0: an ephemeral one). RuntimeError if already serving."""
        if self._server is not None:
            raise RuntimeError("metrics are already served over HTTP")
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        """Stops the HTTP server, if any, and frees its port; idempotent."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server, self._thread = None, None
