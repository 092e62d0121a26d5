"""--metrics-service: a headless Service's addresses → one /metrics URL each, resolved anew at
every read (fake resolvers, no real DNS); replicas that come and go between reads; a name
that does not resolve holds the pools like an unreadable router."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from pdserve.controller.decisions import Decision
from pdserve.controller.discovery import MetricsService, metrics_url
from pdserve.controller.kube import DeploymentPools
from pdserve.controller.loop import Controller, scrape_of
from pdserve.controller.metrics import ControllerMetrics
from pdserve.controller.reasons import Action, Reason
from pdserve.controller.scrape import RouterTotals, ScrapeError, parse_totals
from router.metrics import RouterMetrics
from tests.unit.test_controller_loop import NAMESPACE, Clock, FakeAppsApi, make_config, serve

SERVICE = "pdserve-router-metrics:9090"


class FakeDns:
    """A resolver whose answer the test sets: the ready routers' addresses, or an error."""

    def __init__(self, *addresses: str) -> None:
        self.addresses: Sequence[str] = addresses
        self.error: OSError | None = None
        self.lookups: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append((host, port))
        if self.error is not None:
            raise self.error
        return self.addresses


def test_each_address_becomes_one_metrics_url_at_the_service_port():
    dns = FakeDns("10.0.0.7", "10.0.0.3")
    urls = MetricsService.parse(SERVICE).urls(dns)
    assert urls == ("http://10.0.0.3:9090/metrics", "http://10.0.0.7:9090/metrics")
    assert dns.lookups == [("pdserve-router-metrics", 9090)]


def test_ipv4_and_ipv6_addresses_mix_with_ipv6_bracketed():
    dns = FakeDns("fd00::12", "10.0.0.3", "fd00::12", "10.0.0.3")  # getaddrinfo repeats some
    assert MetricsService.parse(SERVICE).urls(dns) == (
        "http://10.0.0.3:9090/metrics",
        "http://[fd00::12]:9090/metrics",
    )


def test_a_name_that_does_not_resolve_is_a_scrape_error_naming_it():
    dns = FakeDns()
    dns.error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    with pytest.raises(ScrapeError, match="pdserve-router-metrics:9090: cannot resolve"):
        MetricsService.parse(SERVICE).urls(dns)


def test_no_address_is_a_scrape_error_not_zero_load():
    with pytest.raises(ScrapeError, match="no address"):
        MetricsService.parse(SERVICE).urls(FakeDns())


def test_the_real_resolver_refuses_a_bad_label_as_a_scrape_error():
    # idna refuses an empty label before any lookup: a ScrapeError, not a crash.
    service = MetricsService.parse("router..metrics:9090")
    with pytest.raises(ScrapeError, match="cannot resolve"):
        scrape_of(make_config(metrics_urls=(), metrics_service=str(service)))()


class Routers:
    """RouterMetrics by pod IP, read as their text: the fake reader behind a FakeDns."""

    def __init__(self) -> None:
        self.by_ip: dict[str, RouterMetrics] = {}
        self.reads: list[tuple[str, ...]] = []

    def start(self, ip: str) -> RouterMetrics:
        self.by_ip[ip] = RouterMetrics()
        return self.by_ip[ip]

    def read(self, urls: Sequence[str], timeout_s: float) -> dict[str, RouterTotals]:
        self.reads.append(tuple(urls))
        ips = {metrics_url(ip, 9090): ip for ip in self.by_ip}
        return {url: parse_totals(self.by_ip[ips[url]].render()[0].decode()) for url in urls}


def make_controller(dns: FakeDns, routers: Routers) -> tuple[Controller, Clock]:
    config = make_config(metrics_urls=(), metrics_service=SERVICE)  # dry-run: sizes stay
    pools = DeploymentPools(FakeAppsApi(), NAMESPACE, config.deployments)
    clock = Clock()
    scrape = scrape_of(config, resolve=dns, read=routers.read)
    return Controller(config, pools, ControllerMetrics(), scrape, clock), clock


def tick(controller: Controller, clock: Clock) -> Decision:
    """The prefill pool's decision, 30 s after the last."""
    clock.now_s += 30.0
    return controller.tick().prefill


def desired(decision: Decision) -> int:
    assert decision.desired is not None, decision
    return decision.desired.replicas


def test_each_read_follows_the_replicas_listed_then():
    # 1000-token prompts, 1000 prefill tok/s per worker: prefill desires (requests in 30 s) ÷ 30.
    dns, routers = FakeDns("10.0.0.1", "10.0.0.2"), Routers()
    first, second = routers.start("10.0.0.1"), routers.start("10.0.0.2")
    controller, clock = make_controller(dns, routers)
    assert tick(controller, clock).reason is Reason.WARMUP
    serve(first, 30)
    serve(second, 30)
    assert desired(tick(controller, clock)) == 2  # both routers summed
    # A third router scales out with 600 requests already served: a baseline, not load.
    third = routers.start("10.0.0.3")
    serve(third, 600)
    dns.addresses = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    serve(first, 60)
    assert desired(tick(controller, clock)) == 2  # 60 requests: the third not counted
    # The second router goes away; the third now counts from its baseline.
    dns.addresses = ("10.0.0.1", "10.0.0.3")
    serve(first, 30)
    serve(third, 60)
    assert desired(tick(controller, clock)) == 3
    assert [len(urls) for urls in routers.reads] == [2, 2, 3, 2]


def test_a_dns_failure_is_a_no_signal_hold_and_the_next_read_spans_both_periods():
    dns, routers = FakeDns("10.0.0.1"), Routers()
    router = routers.start("10.0.0.1")
    controller, clock = make_controller(dns, routers)
    tick(controller, clock)
    serve(router, 120)  # 120 × 1000 tokens over 60 s: 2 prefill workers
    dns.error = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    decision = tick(controller, clock)
    assert (decision.action, decision.reason) == (Action.HOLD, Reason.NO_SIGNAL)
    assert len(routers.reads) == 1  # nothing read without the addresses
    dns.error = None
    assert desired(tick(controller, clock)) == 2


@pytest.fixture
def router_on_both_loopbacks() -> Iterator[tuple[int, RouterMetrics, RouterMetrics]]:
    """Two routers' real /metrics on one port: 127.0.0.1 and [::1] (skipped without IPv6)."""
    v4_router, v6_router = RouterMetrics(), RouterMetrics()
    v4 = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(v4_router))
    port = v4.server_port

    class V6Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        v6 = V6Server(("::1", port), _handler(v6_router))
    except OSError as exc:
        v4.server_close()
        pytest.skip(f"no IPv6 loopback: {exc}")
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (v4, v6)]
    for thread in threads:
        thread.start()
    yield port, v4_router, v6_router
    for server in (v4, v6):
        server.shutdown()
        server.server_close()


def _handler(router: RouterMetrics) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, content_type = router.render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def test_ipv4_and_ipv6_routers_are_read_over_http(router_on_both_loopbacks):
    port, v4_router, v6_router = router_on_both_loopbacks
    serve(v4_router, 3)
    serve(v6_router, 5)
    config = make_config(metrics_urls=(), metrics_service=f"router-metrics:{port}")
    totals = scrape_of(config, resolve=FakeDns("::1", "127.0.0.1"))()
    assert {url: t.num_requests for url, t in totals.items()} == {
        f"http://127.0.0.1:{port}/metrics": 3,
        f"http://[::1]:{port}/metrics": 5,
    }
