"""Route choice: pure functions of the worker snapshot, the prompt, the index hint and policy.

Decision order for one request, among routable workers (alive, not draining) only:
    1. a worker that can prefill locally — a `both` worker, or a `decode` worker when
       `conditional` is on — whose uncached remainder of the prompt is at most
       `colocate_threshold_tokens` and which has free pages for the prompt
                                                      -> colocated there (SHORT_PROMPT, or
                                                         CACHED_REMAINDER when it holds a prefix)
    2. a prefill worker and a decode worker that can pair exist
                                                      -> that pair (PREFIX_HIT when the chosen
                                                         prefill worker holds a prefix, else
                                                         DISAGGREGATED)
    3. a `both` worker exists                         -> colocated (NO_PAIR)
    4. otherwise NoWorkers (UNAVAILABLE)

"Uncached remainder" on a worker = prompt_len - matched pages x page size, where matched
pages come from the prefix index (`RouteInput.matched_pages`; a hint: missing = 0).

Two workers pair when their KVLayouts are EQUAL and both hold the pair's KV backend: the
topology's choice (kv_transfer/topology.py), or the `kv_backend` override when it can serve
their topology. The decision names that backend; the prefill worker exports through it.

Within a step, the named policy picks:
    prefix_aware  prefill: among the workers whose cost — uncached remainder + queued prefill
                  tokens, the work the prompt would wait behind and cause — is within
                  `balance_tokens` of the cheapest, the one holding the most leading pages;
                  ties (e.g. a prefix nobody holds) by rendezvous hash of the prompt's first
                  page, so one prefix keeps landing on one worker, from every router replica
    least_load    prefill by queued prefill tokens, then queue length, then page usage
    round_robin   workers sorted by id, position `state.turn` (the caller advances it)
and every policy picks the decode worker by running batch, then free pages, and a worker
that prefills locally by its uncached remainder, then queued + running requests. Ties are broken by worker_id, so replicas with one snapshot make one choice.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import xxhash

from kv_transfer.pages import Role, TransportBackend
from kv_transfer.topology import choose_backend
from router.config import PolicyName
from router.errors import NoWorkers
from router.registry import WorkerRecord


class RouteReason(enum.Enum):
    SHORT_PROMPT = "short_prompt"  # step 1, nothing cached there
    CACHED_REMAINDER = "cached_remainder"  # step 1, a cached prefix leaves a short remainder
    PREFIX_HIT = "prefix_hit"  # step 2, the prefill worker holds a prefix
    DISAGGREGATED = "disaggregated"  # step 2, no prefix held
    NO_PAIR = "no_pair"  # step 3: no compatible pair, a `both` worker serves it whole


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    name: PolicyName = PolicyName.PREFIX_AWARE
    colocate_threshold_tokens: int = 0
    kv_backend: TransportBackend | None = None  # overrides the topology's choice per pair
    conditional: bool = True  # decode workers may prefill a short remainder themselves
    balance_tokens: int = 2048  # prefix_aware: extra cost a prefix holder may carry


@dataclass(frozen=True, slots=True)
class PolicyState:
    turn: int = 0  # round-robin position; ignored by the other policies


@dataclass(frozen=True, slots=True)
class RouteInput:
    prompt_len: int
    matched_pages: Mapping[str, int] = field(default_factory=dict)  # worker_id -> pages held
    affinity: bytes | None = None  # the first page's hash: one value per prefix

    def matched(self, worker: WorkerRecord) -> int:
        return self.matched_pages.get(worker.worker_id, 0)

    def uncached(self, worker: WorkerRecord) -> int:
        cached = self.matched(worker) * worker.layout.page_size
        return max(0, self.prompt_len - cached)


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """`decode` streams the tokens; `prefill` is None when `decode` (a `both` worker) does
    the whole request. `kv_backend` moves the KV from `prefill` to `decode` (None: colocated).
    `expected_hit_pages`: pages the index says the prefilling worker holds."""

    reason: RouteReason
    decode: WorkerRecord
    prefill: WorkerRecord | None = None
    kv_backend: TransportBackend | None = None
    expected_hit_pages: int = 0

    @property
    def is_colocated(self) -> bool:
        return self.prefill is None


def has_route(workers: Sequence[WorkerRecord], kv_backend: TransportBackend | None = None) -> bool:
    """Whether some request could be routed now (what the health check reports)."""
    live = [w for w in workers if w.routable]
    return bool(_with_role(live, Role.BOTH) or _pairable_prefills(live, kv_backend))


def pair_backend(
    prefill: WorkerRecord, decode: WorkerRecord, override: TransportBackend | None = None
) -> TransportBackend | None:
    """The backend moving KV from `prefill` to `decode` (topology.choose_backend among the
    backends both hold); None when they cannot pair: their layouts differ, the override cannot
    serve their topology or is not held by both, or no backend both hold serves them."""
    if prefill.layout != decode.layout:
        return None
    held = prefill.kv_backends & decode.kv_backends
    try:
        return choose_backend(prefill.topology, decode.topology, override, held)
    except ValueError:  # no backend both hold serves this pair (or the override cannot)
        return None


def pick_route(
    workers: Sequence[WorkerRecord],
    route: RouteInput,
    config: PolicyConfig,
    state: PolicyState = PolicyState(),
) -> RouteDecision:
    """Picks where the prompt runs. Raises NoWorkers if nowhere."""
    live = [w for w in workers if w.routable]
    local = _local_prefill(live, route, config, state)
    if local is not None:
        return local
    override = config.kv_backend
    prefills = _pairable_prefills(live, override)
    if prefills:
        prefill = _pick_prefill(prefills, route, config, state)
        decodes = [
            w
            for w in _with_role(live, Role.DECODE)
            if pair_backend(prefill, w, override) is not None
        ]
        decode = _choose(decodes, _decode_key, config, state)
        backend = pair_backend(prefill, decode, override)
        hit = route.matched(prefill)
        reason = RouteReason.PREFIX_HIT if hit else RouteReason.DISAGGREGATED
        return RouteDecision(reason, decode, prefill, backend, hit)
    both = _with_role(live, Role.BOTH)
    if both:
        worker = _choose(both, _colocated_key, config, state)
        return RouteDecision(RouteReason.NO_PAIR, worker, expected_hit_pages=route.matched(worker))
    raise NoWorkers(
        "no live worker (or prefill/decode pair with one KV layout and backend) can serve requests"
    )


def pick_decode(
    workers: Sequence[WorkerRecord], prefill: WorkerRecord, kv_backend: TransportBackend | None
) -> WorkerRecord | None:
    """A routable decode worker that takes `prefill`'s KV over `kv_backend`, or None."""
    decodes = [
        w
        for w in _with_role(workers, Role.DECODE)
        if w.routable and pair_backend(prefill, w, kv_backend) == kv_backend
    ]
    return min(decodes, key=_decode_key) if decodes else None


class Toward(enum.Enum):
    """Where a recompute may go, relative to the decode worker whose leg failed."""

    SAME = "same"  # that worker if it is routable (else any other)
    ANY = "any"  # the least loaded, that worker included
    OTHER = "other"  # any but that worker


def pick_recompute(
    workers: Sequence[WorkerRecord], failed: str, toward: Toward
) -> WorkerRecord | None:
    """Where a request whose handed-off KV was unusable is prefilled again and decoded: a
    routable decode or colocated worker chosen by `toward`, or None."""
    candidates = [
        w
        for w in workers
        if w.role in (Role.DECODE, Role.BOTH)
        and w.routable
        and not (toward is Toward.OTHER and w.worker_id == failed)
    ]
    same = [w for w in candidates if w.worker_id == failed]
    if toward is Toward.SAME and same:
        return same[0]
    return min(candidates, key=_colocated_key) if candidates else None


def _local_prefill(
    live: Sequence[WorkerRecord], route: RouteInput, config: PolicyConfig, state: PolicyState
) -> RouteDecision | None:
    """Step 1: a worker that prefills the short uncached remainder itself, if one can."""
    roles = (Role.BOTH, Role.DECODE) if config.conditional else (Role.BOTH,)
    candidates = [
        w
        for w in live
        if w.role in roles
        and route.uncached(w) <= config.colocate_threshold_tokens
        and _has_room(w, route.prompt_len)
    ]
    if not candidates:
        return None
    worker = _choose(candidates, lambda w: (route.uncached(w), *_colocated_key(w)), config, state)
    hit = route.matched(worker)
    reason = RouteReason.CACHED_REMAINDER if hit else RouteReason.SHORT_PROMPT
    return RouteDecision(reason, worker, expected_hit_pages=hit)


def _has_room(worker: WorkerRecord, prompt_len: int) -> bool:
    """Free pages for the prompt; a pool of unknown size is given the benefit of the doubt."""
    load = worker.load
    return not load.pages_total or load.pages_available >= worker.layout.num_pages_for(prompt_len)


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


def _pick_prefill(
    prefills: Sequence[WorkerRecord], route: RouteInput, config: PolicyConfig, state: PolicyState
) -> WorkerRecord:
    if config.name is not PolicyName.PREFIX_AWARE:
        return _choose(prefills, _least_loaded_prefill_key, config, state)

    def cost(worker: WorkerRecord) -> int:
        return route.uncached(worker) + worker.load.queued_prefill_tokens

    cheapest = min(cost(w) for w in prefills)
    window = [w for w in prefills if cost(w) <= cheapest + config.balance_tokens]
    return min(
        window,
        key=lambda w: (-route.matched(w), -_rendezvous(route.affinity, w), cost(w), w.worker_id),
    )


def _rendezvous(affinity: bytes | None, worker: WorkerRecord) -> int:
    """Highest-random-weight hashing: a stable, evenly spread preference per prefix."""
    if affinity is None:
        return 0
    return xxhash.xxh3_64_intdigest(affinity + worker.worker_id.encode())


def _least_loaded_prefill_key(worker: WorkerRecord) -> tuple:
    load = worker.load
    return (load.queued_prefill_tokens, load.queue_len, load.page_usage, worker.worker_id)


def _decode_key(worker: WorkerRecord) -> tuple:
    return (worker.load.running, -worker.load.pages_free, worker.worker_id)


def _colocated_key(worker: WorkerRecord) -> tuple:
    return (worker.load.queue_len + worker.load.running, worker.load.page_usage, worker.worker_id)
