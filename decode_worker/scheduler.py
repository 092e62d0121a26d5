"""Decode worker: the life of one request, in order.

  1. waiting_for_kv  a Decode RPC with a handle: pages for the prompt's KV are allocated,
                     waiting up to `page_wait_s` while the pool is full; the source's lease
                     is kept alive meanwhile (lease_keeper.py).
  2. transferring    the transport of the handle's backend pulls its pages into them, on
                     the RPC's thread (gloo: SendKV to the source, then the receive); the
                     engine keeps stepping the running batch meanwhile.
  3. acked           ReleaseLease to the prefill worker, which unpins its copy. If the lease
                     had ended before the ack (LeaseExpired), the pages read are discarded.
                     A backend whose fetch proves the export was held (shm) is not waited
                     for: the ack goes in the background and the request runs at once.
  4. running         the engine adopts the request with num_computed_tokens = the handle's
                     token count and token #1 as its first output: continuous batching from
                     here, recompute preemption if pages run out.
  5. finished        stop token, EOS, max_tokens or the context limit; pages freed, the
                     stream ends.
A colocated request (no handle) skips 1–3 and is prefilled here from the engine's waiting
queue. A failed or timed-out transfer, or one read under a lease that had ended, frees its
pages unused, still acks (so the prefill side unpins), and fails the stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import torch

from decode_worker.lease_keeper import LeaseExpired, LeaseKeeper
from decode_worker.prefill_peers import PrefillPeers
from decode_worker.streams import OutputStream
from engine.loop import EngineLoop
from engine.request import Request, SamplingParams
from kv_transfer.pages import KVHandle, KVLayout
from kv_transfer.transport_set import TransportSet

_PAGE_RETRY_S = 0.01


class NoPagesForKV(RuntimeError):
    """The pool stayed full for longer than the arrival may wait."""


class IncompatibleHandle(ValueError):
    """The handle's layout, size or backend does not fit this worker or the prompt."""


class DecodeScheduler:
    def __init__(
        self,
        loop: EngineLoop,
        kv_cache: torch.Tensor,
        layout: KVLayout,
        transports: TransportSet,
        peers: PrefillPeers,
        *,
        transfer_timeout_s: float,
        page_wait_s: float,
    ) -> None:
        self._loop = loop
        self._kv_cache = kv_cache
        self._layout = layout
        self._transports = transports
        self._peers = peers
        self._transfer_timeout_s = transfer_timeout_s
        self._page_wait_s = page_wait_s
        self._num_fetching = 0  # fetches in progress, across RPC threads
        self._num_fetching_lock = threading.Lock()

    def start_colocated(
        self, request_id: str, prompt: list[int], sampling: SamplingParams
    ) -> OutputStream:
        stream = OutputStream()
        self._loop.submit(Request(request_id, prompt, sampling), stream.put)
        return stream

    def start_handoff(
        self,
        request_id: str,
        prompt: list[int],
        sampling: SamplingParams,
        first_token_id: int,
        handle: KVHandle,
        src_address: str,
        deadline_s: float,
    ) -> tuple[OutputStream, float]:
        """Runs steps 1–4; returns the stream and the transfer's seconds. Waits for pages and
        the pull no longer than `page_wait_s` / `transfer_timeout_s`, nor past the caller's
        `deadline_s` (time.monotonic()).

        Raises IncompatibleHandle, NoPagesForKV, LeaseExpired, TransferError (pages already
        freed) or TimeoutError (the deadline passed before the pull).
        """
        self._check(handle, len(prompt))
        lease = LeaseKeeper(self._peers, handle, src_address)
        proven = False
        try:
            lease.keep_alive()
            page_ids = self._allocate(len(handle.page_ids), lease.keep_alive, deadline_s)
            with self._peers.pulling_from(handle.transfer_id, src_address):
                transfer_s = self._fetch(handle, page_ids, deadline_s)
            proven = self._transports.fetch_proves_export_held(handle.backend)
        finally:
            trusted = lease.settle(proven)
        if not trusted:
            self._loop.post(lambda core: core.pool.free(page_ids))
            raise LeaseExpired(f"{handle.transfer_id}: the lease ended before the ack")
        req = Request(
            request_id,
            prompt,
            sampling,
            output_token_ids=[first_token_id],
            num_computed_tokens=handle.num_tokens,
            page_ids=page_ids,
        )
        stream = OutputStream()
        self._loop.submit(req, stream.put, running=True)
        return stream, transfer_s

    def abort(self, request_id: str) -> None:
        self._loop.abort_soon(request_id)

    def _check(self, handle: KVHandle, prompt_len: int) -> None:
        if handle.backend not in self._transports.backends:
            held = ", ".join(self._transports.backends)
            raise IncompatibleHandle(f"handle.backend: {handle.backend} is not held (only {held})")
        if handle.layout != self._layout:
            raise IncompatibleHandle(
                f"handle.layout: {handle.layout} != this worker's {self._layout}"
            )
        if handle.num_tokens != prompt_len:
            raise IncompatibleHandle(
                f"handle.num_tokens: {handle.num_tokens} != prompt length {prompt_len}"
            )
        if len(handle.page_ids) != self._layout.num_pages_for(prompt_len):
            raise IncompatibleHandle(
                f"handle.page_ids: {len(handle.page_ids)} pages for {prompt_len} tokens"
            )

    def _allocate(
        self, num_pages: int, while_waiting: Callable[[], None], deadline_s: float
    ) -> list[int]:
        wait_until = min(time.monotonic() + self._page_wait_s, deadline_s)
        while True:
            page_ids = self._loop.call(
                lambda core: (
                    core.pool.allocate(num_pages) if core.pool.can_allocate(num_pages) else None
                )
            )
            if page_ids is not None:
                return page_ids
            if time.monotonic() >= wait_until:
                if wait_until == deadline_s:
                    raise TimeoutError(f"the deadline passed waiting for {num_pages} pages")
                raise NoPagesForKV(f"{num_pages} pages not free within {self._page_wait_s} s")
            while_waiting()
            time.sleep(_PAGE_RETRY_S)

    def _fetch(self, handle: KVHandle, page_ids: list[int], deadline_s: float) -> float:
        started = time.monotonic()
        if started >= deadline_s:
            self._loop.post(lambda core: core.pool.free(page_ids))
            raise TimeoutError(f"the deadline passed before the pull of {handle.transfer_id}")
        timeout_s = min(self._transfer_timeout_s, deadline_s - started)
        self._count_fetching(+1)
        try:
            self._transports.fetch(handle, self._kv_cache, page_ids, timeout_s)
        except BaseException:
            self._loop.post(lambda core: core.pool.free(page_ids))
            raise
        finally:
            self._count_fetching(-1)
        return time.monotonic() - started

    def _count_fetching(self, delta: int) -> None:
        with self._num_fetching_lock:
            self._num_fetching += delta

    @property
    def num_transfers_in_flight(self) -> int:
        return self._num_fetching
