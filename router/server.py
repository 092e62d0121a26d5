"""The router process: its parts wired, and its gRPC server — pdserve.v1.Generation
(generation_service.py), grpc.health.v1, reflection and any launcher-added service — plus,
with `health_port`, the plaintext health-only one (pdserve/health_port.py).

Health is SERVING while some route exists (see policy.has_route) and NOT_SERVING once shutdown
begins. After every monitor round: other routers' registrations are taken in, the live
workers' page events followed, health updated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from engine.config import ModelConfig
from pdserve.channels import message_size_options
from pdserve.health_port import start_aio_health_server
from pdserve.tls import bind
from router import auth
from router.backends import make_index, make_registry
from router.breaker import BreakerState
from router.config import RouterConfig
from router.generation_service import SERVICE_NAME, GenerationServicer, add_generation_service
from router.metrics import RouterMetrics
from router.monitor import WorkerMonitor
from router.orchestrator import Orchestrator, OrchestratorSettings
from router.page_feed import PageEventFeed
from router.policy import PolicyConfig, has_route
from router.prefix_hints import PrefixHints
from router.registry import WorkerRecord, WorkerRegistry
from router.requests import RequestTable
from router.tokenizer import Tokenizer
from router.validation import RequestValidator, ValidationLimits
from router.worker_client import WorkerClients

LIVENESS_SERVICE = "liveness"  # grpc.health.v1 name: SERVING while the router serves

log = logging.getLogger(__name__)


class RouterServer:
    """The router process's parts, wired; `start`/`stop` run it inside an event loop.

    A launcher: `server = RouterServer(config, registry)`, register workers (in `registry`
    directly, or `await server.add_worker(address)`), `await server.start()`, and at the end
    `await server.stop(grace_s)`.
    """

    def __init__(
        self,
        config: RouterConfig,
        registry: WorkerRegistry | None = None,
        extra_services: Callable[[grpc.aio.Server], None] | None = None,
    ) -> None:
        self.config = config
        self._extra_services = extra_services  # e.g. the launcher's pdserve.v1.Cluster
        self.registry = registry if registry is not None else make_registry(config)
        self.index = make_index(config)
        self.metrics = RouterMetrics()
        self.model = ModelConfig.from_dir(config.model_dir)
        tokenizer = Tokenizer.from_dir(config.model_dir)
        self.validator = RequestValidator(
            ValidationLimits.from_config(config, self.model), tokenizer
        )
        self.requests = RequestTable(config.max_concurrent_requests, config.overload_retry_after_s)
        self.clients = WorkerClients(
            config.grpc_max_message_bytes,
            config.overload_retry_after_s,
            config.internal_tls,
            config.internal_auth_token,
        )
        self.orchestrator = Orchestrator(
            self.registry,
            self.clients,
            tokenizer,
            _settings(config, self.model),
            PrefixHints(self.index, self.metrics.count_index_error),
            self.metrics,
        )
        self.feed = PageEventFeed(self.index, self.clients)
        self.index.breaker.add_listener(self._on_index_state)
        self.health = health_aio.HealthServicer()
        self.monitor = WorkerMonitor(
            self.registry,
            self.clients,
            config.stats_poll_period_s,
            config.worker_dead_after_failures,
            config.control_rpc_timeout_s,
            on_round=self._after_round,
            on_report=self.orchestrator.inflight.note_report,
            drop_dead_after_s=config.registry_ttl_s,
        )
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._round_lock = asyncio.Lock()
        self._port = 0
        self.metrics_port = 0  # the bound /metrics port; 0 while not serving metrics
        self.health_port = 0  # the bound health-only port; 0 while it is off

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when config.port is 0); 0 before start."""
        return self._port

    async def add_worker(self, address: str) -> WorkerRecord:
        """Registers the worker at `address` from its own GetStats; raises WorkerUnavailable."""
        record = await self.monitor.discover(address)
        await self._after_round()
        return record

    async def drain_worker(self, worker_id: str) -> bool:
        """Asks the worker to drain and takes it out of routing at once (other routers see
        its flag at their next poll). Returns whether it is drained: idle, safe to stop."""
        record = await self.registry.get(worker_id)
        if record is None:
            return True
        drained = await self.clients.drain(record.address, self.config.control_rpc_timeout_s)
        await self.monitor.poll(record)
        # A request routed here before the drain may still be in its prefill leg.
        return drained and not self.orchestrator.inflight.has_work(worker_id)

    async def remove_worker(self, worker_id: str) -> None:
        """Forgets the worker: registry record and index entries."""
        await self.registry.deregister(worker_id)
        self.orchestrator.inflight.forget(worker_id)
        await self._after_round()

    async def start(self) -> None:
        server = grpc.aio.server(
            options=message_size_options(self.config.grpc_max_message_bytes),
            interceptors=auth.interceptors(self.config.auth_token),
        )
        add_generation_service(GenerationServicer(self), server)
        if self._extra_services is not None:
            self._extra_services(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self._port = bind(server, self.config.bind_address, self.config.tls)
        # Liveness answers from this event loop whatever the workers do: a router without a
        # route is unready (""), not dead, and must not be restarted for it.
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._after_round()
        await server.start()
        self._server = server
        if self.config.health_port is not None:
            self._health_server, self.health_port = await start_aio_health_server(
                self.health, self.config.host, self.config.health_port
            )
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(self.config.host, self.config.metrics_port)
        self.monitor.start()
        log.info("router serving %s on port %d", self.config.served_model, self._port)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING at once, then lets streams finish for up to `grace_s` seconds; the
        health-only port answers NOT_SERVING until then."""
        server, self._server = self._server, None
        health_server, self._health_server = self._health_server, None
        await self.health.enter_graceful_shutdown()
        await self.monitor.stop()
        await self.feed.stop()
        if server is not None:
            await server.stop(grace_s)
        if health_server is not None:
            await health_server.stop(0)
        await self.clients.close()
        await self.index.close()
        await self.registry.close()
        self.metrics.close()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def _on_index_state(self, old: BreakerState, new: BreakerState) -> None:
        self.metrics.set_index_state(new)
        if new is BreakerState.CLOSED:  # back after an outage: rebuild it from the workers
            self.feed.resync()

    async def _after_round(self, _snapshot: list[WorkerRecord] | None = None) -> None:
        """After each monitor round (and each add/remove): take in other routers'
        registrations (dropping workers gone everywhere), follow the live workers' page
        events, update health. One at a time — the monitor, a launcher and a scale overlap —
        and from the registry as it is then (a snapshot taken before may be stale)."""
        async with self._round_lock:
            await self.registry.sync()
            workers = await self.registry.list_workers()
            await self.feed.sync(workers)
            await self._update_health(workers)

    async def _update_health(self, workers: list[WorkerRecord]) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not has_route(workers, self.config.kv_backend):
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


async def serve(config: RouterConfig, registry: WorkerRegistry | None = None) -> None:
    """Runs a router until cancelled, then stops it with config.shutdown_grace_s."""
    server = RouterServer(config, registry)
    await server.start()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(config.shutdown_grace_s)


def _settings(config: RouterConfig, model: ModelConfig) -> OrchestratorSettings:
    return OrchestratorSettings(
        policy=PolicyConfig(
            config.routing_policy,
            config.colocate_threshold_tokens,
            config.kv_backend,
            config.conditional_disaggregation,
            config.prefix_balance_tokens,
        ),
        eos_token_ids=model.eos_token_ids,
        prefill_timeout_s=config.prefill_timeout_s,
        decode_timeout_s=config.decode_timeout_s,
        control_timeout_s=config.control_rpc_timeout_s,
        max_attempts=config.max_route_attempts,
        kv_failure_policy=config.kv_failure_policy,
    )
