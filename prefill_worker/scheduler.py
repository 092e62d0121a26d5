"""Prefill worker: the life of one request, in order.

  1. admitted   Prefill RPC → the engine's waiting queue (`EngineLoop.submit`), marked
                `handoff_after_prefill`.
  2. computing  scheduled in token-budget chunks beside other prompts; cached prefix pages
                are reused (the pool is the truth; the router's index is only a hint).
  3. token #1   sampled; the engine finishes the request as FINISHED_HANDOFF and hands its
                page references to this scheduler instead of freeing them.
  4. leased     the pages are exported through the KV backend the router chose for the pair
                (the worker's default if it named none) and pinned under a lease (leases.py);
                the handle, naming that backend, goes back to the router with token #1.
  5. released   the decode worker's ack (ReleaseLease), or the lease's expiry, releases the
                export and returns the page references to the engine.
A request whose token #1 already ends it (stop token, max_tokens 1) skips 4–5: its pages are
freed at once and no handle is returned. An abort before 3 frees the pages in the engine.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from engine.core import RequestOutput
from engine.loop import EngineLoop
from engine.request import Request, RequestStatus, SamplingParams
from kv_transfer.pages import KVHandle, KVLayout, TransportBackend
from kv_transfer.transport_set import TransportSet
from prefill_worker.leases import Lease, LeaseTable


class PrefillAborted(RuntimeError):
    """The request was aborted before its token #1."""


@dataclass(frozen=True, slots=True)
class PrefillResult:
    first_token_id: int
    finished: bool  # token #1 ended the request; no handle
    handle: KVHandle | None
    num_cached_tokens: int
    queue_s: float
    prefill_s: float
    first_token_unix_s: float  # this host's wall clock when token #1 was sampled


@dataclass(frozen=True, slots=True)
class HandleSource:
    """What a handle names as its source."""

    worker_id: str
    epoch: int
    layout: KVLayout
    lease_ttl_s: float


class PrefillScheduler:
    def __init__(
        self,
        loop: EngineLoop,
        kv_cache: torch.Tensor,
        transports: TransportSet,
        leases: LeaseTable,
        source: HandleSource,
    ) -> None:
        self._loop = loop
        self._kv_cache = kv_cache
        self._transports = transports
        self._leases = leases
        self._source = source

    def prefill(
        self,
        request_id: str,
        prompt: list[int],
        sampling: SamplingParams,
        kv_backend: TransportBackend | None,
        timeout_s: float,
    ) -> PrefillResult:
        """Runs steps 1–4; blocks until token #1. Raises TimeoutError or PrefillAborted, and
        UnavailableBackend before any work when this worker does not hold `kv_backend`."""
        backend = self._transports.resolve(kv_backend)
        req = Request(request_id, prompt, sampling, handoff_after_prefill=True)
        done: Future[tuple[RequestOutput, float]] = Future()
        self._loop.submit(req, lambda output: done.set_result((output, time.time())))
        try:
            output, sampled_unix_s = done.result(timeout_s)
        except TimeoutError:
            self.abort(request_id)
            raise
        if req.status is RequestStatus.FINISHED_ABORTED:
            raise PrefillAborted(request_id)
        handoff = output.handoff_page_ids
        handle = self._lease(req, handoff, backend) if handoff else None
        started = req.first_scheduled_s or req.arrival_s
        return PrefillResult(
            first_token_id=output.new_token_ids[0],
            finished=handle is None,
            handle=handle,
            num_cached_tokens=req.num_cached_tokens,
            queue_s=started - req.arrival_s,
            prefill_s=time.monotonic() - started,
            first_token_unix_s=sampled_unix_s,
        )

    def abort(self, request_id: str) -> None:
        """Aborts a request still in the engine (steps 1–2); a no-op afterwards."""
        self._loop.abort_soon(request_id)

    def _lease(self, req: Request, page_ids: list[int], backend: TransportBackend) -> KVHandle:
        transfer_id = f"{self._source.worker_id}-{uuid.uuid4().hex}"
        expiry = time.time() + self._source.lease_ttl_s
        try:
            locator = self._transports.export(backend, transfer_id, self._kv_cache, page_ids)
        except BaseException:
            self._loop.post(lambda core: core.pool.free(page_ids))
            raise
        self._leases.grant(Lease(transfer_id, req.request_id, tuple(page_ids), expiry, backend))
        return KVHandle(
            transfer_id=transfer_id,
            src_worker_id=self._source.worker_id,
            src_epoch=self._source.epoch,
            page_ids=tuple(page_ids),
            num_tokens=req.num_computed_tokens,
            layout=self._source.layout,
            lease_expiry_unix_s=expiry,
            backend=backend,
            locator=locator,
        )
