"""Route choice: pure functions of the worker snapshot, the prompt length and the policy.

Decision order for one request, among live workers only:
    1. prompt_len <= colocate_threshold_tokens and a `both` worker exists -> colocated
    2. a prefill worker and a decode worker that can pair exist          -> that pair
    3. a `both` worker exists                                            -> colocated
    4. otherwise NoWorkers (UNAVAILABLE)

Two workers pair when their KVLayouts are EQUAL and both hold the pair's KV backend: the
topology's choice (kv_transfer/topology.py), or the `kv_backend` override when it can serve
their topology. The decision names that backend; the prefill worker exports through it.

Within a step, the named policy picks: `least_load` (prefill by queue then page usage,
decode by running batch then free pages, ties by worker_id) or `round_robin` (workers
sorted by id, position `state.turn`; the caller owns the turn counter and advances it).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kv_transfer.pages import Role, TransportBackend
from kv_transfer.topology import choose_backend
from router.config import PolicyName
from router.errors import NoWorkers
from router.registry import WorkerRecord


class RouteReason(enum.Enum):
    SHORT_PROMPT = "short_prompt"  # step 1
    DISAGGREGATED = "disaggregated"  # step 2
    NO_PAIR = "no_pair"  # step 3: no compatible pair, a `both` worker serves it whole


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: PolicyName = PolicyName.LEAST_LOAD
    colocate_threshold_tokens: int = 0
    kv_backend: TransportBackend | None = None  # overrides the topology's choice per pair


@dataclass(frozen=True, slots=True)
class PolicyState:
    turn: int = 0  # round-robin position; ignored by least_load


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """`decode` streams the tokens; `prefill` is None when `decode` (a `both` worker) does
    the whole request. `kv_backend` moves the KV from `prefill` to `decode` (None: colocated)."""

    reason: RouteReason
    decode: WorkerRecord
    prefill: WorkerRecord | None = None
    kv_backend: TransportBackend | None = None

    @property
    def is_colocated(self) -> bool:
        return self.prefill is None


def has_route(workers: Sequence[WorkerRecord], kv_backend: TransportBackend | None = None) -> bool:
    """Whether some request could be routed now (what the health check reports)."""
    live = [w for w in workers if w.alive]
    return bool(_with_role(live, Role.BOTH) or _pairable_prefills(live, kv_backend))


def pair_backend(
    prefill: WorkerRecord, decode: WorkerRecord, override: TransportBackend | None = None
) -> TransportBackend | None:
    """The backend moving KV from `prefill` to `decode`; None when they cannot pair: their
    layouts differ, the override cannot serve their topology, or one lacks the backend."""
    if prefill.layout != decode.layout:
        return None
    try:
        backend = choose_backend(prefill.topology, decode.topology, override)
    except ValueError:  # the override cannot serve this pair's topology
        return None
    return backend if backend in prefill.kv_backends & decode.kv_backends else None


def pick_route(
    workers: Sequence[WorkerRecord],
    prompt_len: int,
    config: PolicyConfig,
    state: PolicyState = PolicyState(),
) -> RouteDecision:
    """Picks where a prompt of `prompt_len` tokens runs. Raises NoWorkers if nowhere."""
    live = [w for w in workers if w.alive]
    both = _with_role(live, Role.BOTH)
    if both and prompt_len <= config.colocate_threshold_tokens:
        return RouteDecision(RouteReason.SHORT_PROMPT, _choose(both, _colocated_key, config, state))
    override = config.kv_backend
    prefills = _pairable_prefills(live, override)
    if prefills:
        prefill = _choose(prefills, _prefill_key, config, state)
        decodes = [
            w
            for w in _with_role(live, Role.DECODE)
            if pair_backend(prefill, w, override) is not None
        ]
        decode = _choose(decodes, _decode_key, config, state)
        backend = pair_backend(prefill, decode, override)
        return RouteDecision(RouteReason.DISAGGREGATED, decode, prefill, backend)
    if both:
        return RouteDecision(RouteReason.NO_PAIR, _choose(both, _colocated_key, config, state))
    raise NoWorkers(
        "no live worker (or prefill/decode pair with one KV layout and backend) can serve requests"
    )


def _with_role(workers: Sequence[WorkerRecord], role: Role) -> list[WorkerRecord]:
    return [w for w in workers if w.role is role]


def _pairable_prefills(
    live: Sequence[WorkerRecord], override: TransportBackend | None
) -> list[WorkerRecord]:
    """Prefill workers that can pair with at least one decode worker."""
    decodes = _with_role(live, Role.DECODE)
    return [
        p
        for p in _with_role(live, Role.PREFILL)
        if any(pair_backend(p, d, override) is not None for d in decodes)
    ]


def _choose(
    candidates: Sequence[WorkerRecord],
    least_load_key: Callable[[WorkerRecord], tuple],
    config: PolicyConfig,
    state: PolicyState,
) -> WorkerRecord:
    if config.name is PolicyName.ROUND_ROBIN:
        ordered = sorted(candidates, key=lambda w: w.worker_id)
        return ordered[state.turn % len(ordered)]
    return min(candidates, key=least_load_key)


def _prefill_key(worker: WorkerRecord) -> tuple:
    return (worker.load.queue_len, worker.load.page_usage, worker.worker_id)


def _decode_key(worker: WorkerRecord) -> tuple:
    return (worker.load.running, -worker.load.pages_free, worker.worker_id)


def _colocated_key(worker: WorkerRecord) -> tuple:
    return (worker.load.queue_len + worker.load.running, worker.load.page_usage, worker.worker_id)
