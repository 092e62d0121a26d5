"""The router: validates, tokenizes, routes and orchestrates each request (no torch, no Ray).

Module map, in the order a request meets them:
    config.py        RouterConfig (env PDSERVE_ROUTER_*), read once, frozen
    server.py        RouterServer: the parts wired; gRPC server, health, reflection
    generation_service.py  pdserve.v1.Generation: one request from bytes to its status
    api_proto.py     public-API protobuf <-> the dataclasses below (used by server.py only)
    validation.py    RawRequest -> ValidatedRequest, or InvalidArgument(field)
    tokenizer.py     tokenizer.json + chat template (jinja2), no transformers
    requests.py      RequestTable: admission cap, duplicate ids, Abort by id
    prefix_hints.py  the prompt's page hashes -> the index's {worker: leading pages held}
    inflight.py      this router's outstanding work per worker (polled load lags)
    policy.py        pure route choice: prefix-aware / least-load / round-robin pair, or a
                     worker that prefills a short uncached remainder itself
    orchestrator.py  one request: route, retry before token #1, in-flight counts
    request_flow.py  one attempt's legs, cancellation fan-out, the final message
    events.py        what a request's stream carries (chunks, completion), its clock
    output.py        detokenizer.py + stops.py over one request's token stream
    worker_client.py internal Worker RPCs, worker proto <-> dataclasses
    registry.py      WorkerRecord + WorkerRegistry interface (in-memory default)
    redis_registry.py  the registry shared by router replicas through Redis
    monitor.py       GetStats polling: load, liveness, health
    page_feed.py     workers' WatchPageEvents streams -> the prefix index
    tasks.py         stopping a background task for good, within a deadline
    prefix_index.py  PrefixIndex interface + in-memory backend (the hint: who holds which pages)
    redis_index.py   the Redis backend (Lua: apply and lookup in one round trip each)
    breaker.py       circuit breaker: Redis down -> load-only routing, never a failed request
    backends.py      registry + index as configured (embedded or Redis)
    metrics.py       Prometheus metrics of the router (pdserve_ prefix)
    errors.py        every bad ending as a typed error -> gRPC status with details
"""
