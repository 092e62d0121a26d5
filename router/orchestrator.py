"""One request, from a validated request to its single terminal outcome: routing, retries;
each attempt's legs run in request_flow.py.

Lifecycle of a request here:
    1. route        the prefix index's hint for the prompt (prefix_hints.py) and the registry
                    snapshot raised to this router's own in-flight work (inflight.py) ->
                    policy.pick_route (NoWorkers -> UNAVAILABLE)
    2. prefill leg  Prefill on the prefill worker, naming the pair's KV backend (the route's)
                    -> token #1 + KVHandle of that backend (lease pinned there)
    3. token #1     emitted at once (TTFT); if it finished the request there is no decode leg
    4. decode leg   the route's decode worker, or another that pairs the same way if it began
                    draining meanwhile (a scale-in never strands a routed request);
                    Decode(handle, token #1) on it; the decode worker fetches the KV through
                    the handle's backend (gloo: it asks `src_address` to SendKV), acks the
                    lease itself (ReleaseLease to `src_address`), then streams
    5. completion   exactly one Completion: finish reason, usage, timing, worker ids
Colocated route: no step 2; Decode without a handle on the `both` worker streams from token #1.

Retry: a worker that fails or is full (UNAVAILABLE, RESOURCE_EXHAUSTED) before the client
saw a token is left out and the request routed again — after the failed attempt's legs were
wound down — up to `max_attempts` routes. After token #1, a decode leg that fails before its
first decode token is recomputed on a decode worker (request_flow.py, `kv_failure_policy`);
any later failure is final (WorkerLost).

Whatever ends the request (completion, stop string, worker failure, client cancel,
deadline, Abort), `Legs.wind_down` runs before `run` returns or raises: every started leg
that did not finish is sent Abort (all of them unless it completed), and a lease that no
decode worker acked is released on the prefill worker, so no pages are stranded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from router.config import KVFailurePolicy
from router.errors import NoWorkers, Overloaded, RouterError, WorkerUnavailable
from router.events import RequestClock
from router.inflight import InFlightLoad
from router.lifecycle import Phase, RequestLifecycle
from router.metrics import RouterMetrics
from router.policy import (
    PolicyConfig,
    PolicyState,
    RouteDecision,
    RouteInput,
    Toward,
    pick_decode,
    pick_recompute,
    pick_route,
)
from router.prefix_hints import PrefixHints
from router.registry import WorkerRecord, WorkerRegistry
from router.request_flow import Emit, RequestFlow
from router.tokenizer import Tokenizer
from router.validation import ValidatedRequest
from router.worker_client import WorkerClients

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OrchestratorSettings:
    policy: PolicyConfig
    eos_token_ids: tuple[int, ...]
    prefill_timeout_s: float
    decode_timeout_s: float
    control_timeout_s: float  # Abort / ReleaseLease during wind-down
    max_attempts: int = 2  # routes per request while the client has seen no token
    kv_failure_policy: KVFailurePolicy = KVFailurePolicy.RECOMPUTE


class Orchestrator:
    """Runs requests; owns the round-robin turn and the in-flight counts."""

    def __init__(
        self,
        registry: WorkerRegistry,
        clients: WorkerClients,
        tokenizer: Tokenizer,
        settings: OrchestratorSettings,
        hints: PrefixHints,
        metrics: RouterMetrics,
    ) -> None:
        self._registry = registry
        self.clients = clients
        self.tokenizer = tokenizer
        self.settings = settings
        self.hints = hints
        self.metrics = metrics
        self.inflight = InFlightLoad()
        self._turn = 0

    async def run(
        self,
        request: ValidatedRequest,
        clock: RequestClock,
        emit: Emit,
        lifecycle: RequestLifecycle,
    ) -> None:
        """Streams TokenChunks then exactly one Completion through `emit`, advancing
        `lifecycle` (its terminal status is the caller's to record).

        Any other ending raises: a RouterError, or CancelledError when the caller's task was
        cancelled. Each attempt's legs are wound down before the next attempt, and before this
        returns or raises. A worker that fails (or is full) before the client saw a token is
        left out and the request routed again, up to `max_attempts` routes in all.
        """
        avoided: set[str] = set()
        failure: RouterError | None = None
        for attempt in range(1, self.settings.max_attempts + 1):
            lifecycle.enter(Phase.ROUTING)
            try:
                decision = await self._route(request, avoided)
            except NoWorkers:
                if failure is None:
                    raise
                raise failure from None  # nowhere else to go: the last attempt's error stands
            flow = RequestFlow(self, request, clock, emit, decision, lifecycle)
            try:
                await self._attempt(flow)
                return
            except (WorkerUnavailable, Overloaded) as error:
                failed = flow.worker_failed_before_first_token()
                if failed is None or attempt == self.settings.max_attempts:
                    raise
                log.info("request %s: %s failed before token #1", request.request_id, failed)
                self.metrics.count_retry()
                avoided.add(failed)
                failure = error

    async def _attempt(self, flow: RequestFlow) -> None:
        try:
            with self.inflight.decoding(flow.decision.decode.worker_id) as move:
                flow.on_decode_moved = move
                await flow.execute()
        finally:
            await asyncio.shield(flow.legs.wind_down(self.clients, self.settings.control_timeout_s))

    async def decode_worker_now(self, decision: RouteDecision) -> WorkerRecord:
        """Where the decode leg goes once prefill is done: the route's decode worker, unless it
        began draining (or left) meanwhile — then another routable one that pairs with the
        prefill worker over the same KV backend, if there is one."""
        current = await self._registry.get(decision.decode.worker_id)
        if decision.prefill is None or (current is not None and current.routable):
            return decision.decode
        workers = self.inflight.overlay(await self._registry.list_workers())
        replacement = pick_decode(workers, decision.prefill, decision.kv_backend)
        return replacement if replacement is not None else decision.decode

    async def recompute_target(self, failed: str, toward: Toward) -> WorkerRecord | None:
        """Where a request whose decode leg on `failed` could not use its KV is prefilled
        again (None: nowhere)."""
        workers = self.inflight.overlay(await self._registry.list_workers())
        return pick_recompute(workers, failed, toward)

    async def _route(self, request: ValidatedRequest, avoided: set[str]) -> RouteDecision:
        listed = await self._registry.list_workers()
        workers = self.inflight.overlay([w for w in listed if w.worker_id not in avoided])
        pages = await self.hints.lookup(request.prompt_token_ids, workers)
        route = RouteInput(request.prompt_len, pages.matched, pages.affinity)
        decision = pick_route(workers, route, self.settings.policy, PolicyState(self._turn))
        self._turn += 1
        prefilling = decision.prefill or decision.decode
        self.hints.record(prefilling, pages)
        hit_tokens = decision.expected_hit_pages * prefilling.layout.page_size
        self.metrics.count_route(decision.reason, min(hit_tokens, request.prompt_len))
        return decision

    def stop_token_text(self, token_id: int) -> str:
        return self.tokenizer.decode((token_id,), skip_special_tokens=False)
