"""Where the routers' /metrics are when they come and go: every address of one DNS name,
looked up afresh at each read.

The chart's `router-metrics` Service is headless: its name resolves to one A or AAAA record
per ready router pod (a ClusterIP would hand each read to a random replica, and per-router
deltas would then mix replicas' counters). Each read resolves it again, and each address
becomes one URL, http://<ip>:<port>/metrics ([<ip>] for IPv6), read like a --metrics-url.
SignalWindow takes the changes: a router first listed is only a baseline, one no longer
listed stops counting.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pdserve.controller.scrape import ScrapeError

Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) → the host's addresses as text, IPv4 and IPv6; raises OSError when it cannot."""

_HOST = re.compile(r"[A-Za-z0-9_.-]+")


def resolve_ips(host: str, port: int) -> list[str]:
    """Every address of `host` (A and AAAA) as the system resolver gives it now, search
    domains included (a short Service name resolves in the pod's own namespace)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def metrics_url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


@dataclass(frozen=True, slots=True)
class MetricsService:
    """A DNS name listing every router replica (a headless Service), and their metrics port."""

    host: str
    port: int

    @classmethod
    def parse(cls, address: str) -> MetricsService:
        """`host:port`, e.g. pdserve-router-metrics:9090; ValueError otherwise."""
        host, _, port = address.rpartition(":")
        if not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"expected host:port, e.g. pdserve-router-metrics:9090; got {address!r}"
            )
        return cls(host, int(port))

    def urls(self, resolve: Resolver) -> tuple[str, ...]:
        """One /metrics URL per address the name has now, each once, sorted. ScrapeError
        when it does not resolve, or resolves to nothing: reading no router at all would
        look like no load."""
        try:
            addresses = resolve(self.host, self.port)
        except (OSError, UnicodeError) as exc:  # gaierror is an OSError; idna refuses a bad label
            raise ScrapeError(f"{self}: cannot resolve: {exc}") from exc
        if not addresses:
            raise ScrapeError(f"{self}: no address (no router ready?)")
        return tuple(sorted({metrics_url(ip, self.port) for ip in addresses}))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"
