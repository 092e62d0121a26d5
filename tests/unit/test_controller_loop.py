"""The controller's ticks against a fake Kubernetes API and the router's real metrics: dry-run,
--apply, holds (warm-up, no signal, pending pods, Kubernetes errors), exported metrics, and
the real loop over HTTP."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import (
    V1Deployment,
    V1DeploymentSpec,
    V1DeploymentStatus,
    V1LabelSelector,
    V1ObjectMeta,
    V1PodTemplateSpec,
)
from kubernetes.client.exceptions import ApiException

from pdserve.controller.config import ControllerConfig
from pdserve.controller.kube import DeploymentPools
from pdserve.controller.loop import Controller, run_loop
from pdserve.controller.metrics import ControllerMetrics
from pdserve.controller.reasons import Action, Reason
from pdserve.controller.scrape import ScrapeError, parse_totals
from router.events import Timing, Usage
from router.metrics import RouterMetrics

NAMESPACE = "serving"
URL = "http://router:9090/metrics"


def make_deployment(replicas: int, ready: int | None = None) -> V1Deployment:
    ready = replicas if ready is None else ready
    return V1Deployment(
        metadata=V1ObjectMeta(generation=1),
        spec=V1DeploymentSpec(
            replicas=replicas, selector=V1LabelSelector(), template=V1PodTemplateSpec()
        ),
        status=V1DeploymentStatus(
            replicas=replicas,
            ready_replicas=ready,
            updated_replicas=replicas,
            unavailable_replicas=replicas - ready or None,
            observed_generation=1,
        ),
    )


class FakeAppsApi:
    """The two AppsV1Api calls the controller makes, over in-memory Deployments. A patch is
    recorded and settles at once (every pod ready)."""

    def __init__(self, prefill: int = 1, decode: int = 1) -> None:
        self.deployments = {
            "pdserve-prefill": make_deployment(prefill),
            "pdserve-decode": make_deployment(decode),
        }
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.num_reads = 0
        self.reads_fail = False
        self.patches_fail = False

    def read_namespaced_deployment(self, name: str, namespace: str) -> V1Deployment:
        assert namespace == NAMESPACE
        self.num_reads += 1
        if self.reads_fail:
            raise ApiException(status=503, reason="Service Unavailable")
        return self.deployments[name]

    def patch_namespaced_deployment_scale(self, name: str, namespace: str, body: Any) -> None:
        if self.patches_fail:
            raise ApiException(status=409, reason="Conflict")
        self.patches.append((name, namespace, body))
        self.deployments[name] = make_deployment(body["spec"]["replicas"])


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def serve(router: RouterMetrics, num: int, prompt_tokens: int = 1000, completion_tokens: int = 2):
    for _ in range(num):
        router.observe_completion(
            Usage(prompt_tokens, completion_tokens, 0),
            Timing(queue_s=0.01, prefill_s=0.1, kv_transfer_s=0.0, ttft_s=0.2, e2e_s=0.3),
        )


def make_config(**overrides: Any) -> ControllerConfig:
    # Per worker: 1000 uncached prompt tok/s and, for decode, 100 generated tok/s planned.
    settings: dict[str, Any] = dict(
        metrics_urls=(URL,),
        namespace=NAMESPACE,
        target_utilization=1.0,
        prefill_tokens_per_s_per_worker=1000.0,
        decode_tokens_per_s_per_worker=100.0,
        capacity_alpha=0.0,
        warmup_samples=0,
        cooldown_s=60.0,
        scale_down_stable_s=120.0,
        metrics_port=None,
    )
    return ControllerConfig(**(settings | overrides))


class Harness:
    """A Controller over a fake API, one RouterMetrics scraped as text, and a fake clock."""

    def __init__(self, config: ControllerConfig, api: FakeAppsApi) -> None:
        self.api, self.router, self.clock = api, RouterMetrics(), Clock()
        self.metrics = ControllerMetrics()
        self.scrape_fails = False
        pools = DeploymentPools(api, config.namespace, config.deployments)
        self.controller = Controller(config, pools, self.metrics, self._scrape, self.clock)

    def tick(self, after_s: float = 30.0):
        self.clock.now_s += after_s
        return self.controller.tick()

    def _scrape(self):
        if self.scrape_fails:
            raise ScrapeError(f"{URL}: connection refused")
        return {URL: parse_totals(self.router.render()[0].decode())}


def test_the_first_read_is_only_a_baseline():
    harness = Harness(make_config(apply=True), FakeAppsApi())
    decisions = harness.tick()
    assert decisions.prefill.reason is decisions.decode.reason is Reason.WARMUP
    assert harness.api.patches == []


def test_dry_run_recommends_and_never_patches():
    # 30 s of 3000 prompt tok/s and 300 generated tok/s: 3 prefill and 3 decode workers.
    harness = Harness(make_config(), FakeAppsApi(prefill=1, decode=1))
    harness.tick()
    serve(harness.router, 90, prompt_tokens=1000, completion_tokens=100)
    decisions = harness.tick()
    assert (decisions.prefill.action, decisions.prefill.target) == (Action.RECOMMEND, 3)
    assert (decisions.decode.action, decisions.decode.target) == (Action.RECOMMEND, 3)
    serve(harness.router, 90, prompt_tokens=1000, completion_tokens=100)
    assert harness.tick().prefill.action is Action.RECOMMEND
    assert harness.api.patches == []


def test_apply_patches_each_decided_change_exactly_once():
    harness = Harness(make_config(apply=True), FakeAppsApi(prefill=1, decode=1))
    harness.tick()
    for _ in range(3):  # the same load three ticks running: one scale-up, then holds
        serve(harness.router, 90, prompt_tokens=1000, completion_tokens=10)
        decisions = harness.tick()
    assert harness.api.patches == [("pdserve-prefill", NAMESPACE, {"spec": {"replicas": 3}})]
    assert (decisions.prefill.action, decisions.prefill.current) == (Action.HOLD, 3)


def test_unreadable_router_metrics_hold_every_pool():
    harness = Harness(make_config(apply=True), FakeAppsApi(prefill=1, decode=1))
    harness.tick()
    serve(harness.router, 90)
    harness.scrape_fails = True
    decisions = harness.tick()
    assert decisions.prefill.reason is decisions.decode.reason is Reason.NO_SIGNAL
    assert decisions.prefill.action is Action.HOLD and harness.api.patches == []


def test_after_a_failed_read_the_rates_span_both_periods():
    harness = Harness(make_config(apply=True), FakeAppsApi(prefill=1, decode=1))
    harness.tick()
    serve(harness.router, 120)  # 120 × 1000 tokens over 60 s: 2 prefill workers, not 4
    harness.scrape_fails = True
    harness.tick()
    harness.scrape_fails = False
    assert harness.tick().prefill.target == 2


def test_a_pool_with_pods_pending_holds():
    api = FakeAppsApi(prefill=1, decode=1)
    api.deployments["pdserve-prefill"] = make_deployment(2, ready=1)
    harness = Harness(make_config(apply=True), api)
    harness.tick()
    serve(harness.router, 90, completion_tokens=10)
    decisions = harness.tick()
    assert (decisions.prefill.action, decisions.prefill.reason) == (
        Action.HOLD,
        Reason.PENDING_PODS,
    )
    assert harness.api.patches == []


def test_unreadable_deployments_hold_with_kube_error():
    harness = Harness(make_config(apply=True), FakeAppsApi())
    harness.api.reads_fail = True
    decisions = harness.tick()
    assert (decisions.prefill.reason, decisions.prefill.current) == (Reason.KUBE_ERROR, None)


def test_a_failed_patch_is_a_hold_and_starts_no_cooldown():
    harness = Harness(make_config(apply=True), FakeAppsApi(prefill=1, decode=1))
    harness.tick()
    serve(harness.router, 90, completion_tokens=10)
    harness.api.patches_fail = True
    assert harness.tick().prefill.reason is Reason.KUBE_ERROR
    harness.api.patches_fail = False
    serve(harness.router, 90, completion_tokens=10)
    assert harness.tick().prefill.action is Action.SCALE_UP  # at once: no cooldown started


def test_decisions_and_sizes_are_exported():
    harness = Harness(make_config(), FakeAppsApi(prefill=1, decode=2))
    harness.tick()
    serve(harness.router, 90, completion_tokens=10)
    harness.tick()
    text = harness.metrics.render()[0].decode()
    assert 'pdserve_controller_desired_replicas{pool="prefill"} 3.0' in text
    assert 'pdserve_controller_current_replicas{pool="decode"} 2.0' in text
    assert (
        'pdserve_controller_decisions_total{action="recommend",pool="prefill",reason="load"} 1.0'
        in text
    )
    assert (
        'pdserve_controller_decisions_total{action="hold",pool="decode",reason="warmup"} 1.0'
        in (text)
    )
    assert 'pdserve_controller_capacity_tokens_per_s{pool="prefill"} 1000.0' in text


@pytest.fixture
def router_endpoint() -> Iterator[str]:
    """A real HTTP /metrics of a RouterMetrics that completes 10 requests of 1000 prompt
    tokens before each read: a steady load, far over one prefill worker."""
    router = RouterMetrics()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            serve(router, 10, prompt_tokens=1000, completion_tokens=2)
            body, content_type = router.render()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_real_loop_scales_the_busy_pool_once(router_endpoint):
    # Period 20 ms; decode's capacity is far above its load, prefill's far below: prefill goes
    # to its maximum (3) once, decode stays at its minimum, and every later tick holds.
    config = make_config(
        metrics_urls=(router_endpoint,),
        apply=True,
        period_s=0.02,
        cooldown_s=0.0,
        max_prefill=3,
        decode_tokens_per_s_per_worker=1e9,
    )
    api, metrics, stop = FakeAppsApi(prefill=1, decode=1), ControllerMetrics(), threading.Event()
    controller = Controller(config, DeploymentPools(api, NAMESPACE, config.deployments), metrics)
    loop = threading.Thread(target=run_loop, args=(controller, config.period_s, stop))
    loop.start()
    deadline_s = time.monotonic() + 10.0
    while api.num_reads < 2 * 8 and time.monotonic() < deadline_s:  # 8 ticks
        time.sleep(0.01)
    stop.set()
    loop.join(timeout=5.0)
    assert not loop.is_alive() and api.num_reads >= 2 * 8
    assert api.patches == [("pdserve-prefill", NAMESPACE, {"spec": {"replicas": 3}})]
    text = metrics.render()[0].decode()
    assert 'action="scale_up",pool="prefill",reason="at_max"} 1.0' in text
