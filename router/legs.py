"""Which worker calls one request attempt has made, and what undoing them takes.

A `Legs` is filled in by its RequestFlow as each call goes out (prefill sent, lease pinned,
decode sent, first decode update, finished, completed); `wind_down` then aborts every leg
that did not finish and releases a lease no decode worker acked — before the request's
handler returns, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from router.worker_client import WorkerClients
from router.worker_wire import HandOff

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Legs:
    """Which worker calls exist for one request, for the wind-down."""

    request_id: str
    prefill_address: str = ""  # set once Prefill was sent
    handoff: HandOff | None = None  # a lease pinned on the prefill worker
    decode_address: str = ""  # set once Decode was sent
    decode_acked: bool = False  # a chunk came: the decode worker fetched and acked the lease
    decode_finished: bool = False
    completed: bool = False  # the Completion was emitted

    async def wind_down(self, clients: WorkerClients, timeout_s: float) -> None:
        """Best effort: a failed call is logged, never raised (the lease TTL is the backstop)."""
        calls = []
        if self.prefill_address and not self.completed:
            calls.append(clients.abort(self.prefill_address, self.request_id, timeout_s))
        if self.handoff is not None and not self.decode_acked:
            transfer_id = self.handoff.handle.transfer_id
            calls.append(clients.release_lease(self.prefill_address, transfer_id, timeout_s))
        if self.decode_address and not (self.completed and self.decode_finished):
            calls.append(clients.abort(self.decode_address, self.request_id, timeout_s))
        for outcome in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.info("request %s: wind-down call failed: %s", self.request_id, outcome)
