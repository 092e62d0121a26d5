"""The router: validates, tokenizes, routes and orchestrates each request (no torch, no Ray).

Module map, in the order a request meets them:
    config.py        RouterConfig (env PDSERVE_ROUTER_*), read once, frozen
    server.py        public gRPC edge: Generation servicer, health, reflection, RouterServer
    api_proto.py     public-API protobuf <-> the dataclasses below (used by server.py only)
    validation.py    RawRequest -> ValidatedRequest, or InvalidArgument(field)
    tokenizer.py     tokenizer.json + chat template (jinja2), no transformers
    requests.py      RequestTable: admission cap, duplicate ids, Abort by id
    policy.py        pure route choice: colocated `both` worker or a (prefill, decode) pair
    orchestrator.py  one request's two legs, cancellation fan-out, the final message
    events.py        what a request's stream carries (chunks, completion), its clock
    output.py        detokenizer.py + stops.py over one request's token stream
    worker_client.py internal Worker RPCs, worker proto <-> dataclasses
    registry.py      WorkerRecord + WorkerRegistry interface (in-memory default)
    monitor.py       GetStats polling: load, liveness, health
    errors.py        every bad ending as a typed error -> gRPC status with details
"""
