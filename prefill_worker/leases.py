"""Handed-off pages pinned under a lease until the decode side acks or the lease expires.

One `LeaseTable` per prefill worker is the sole owner of outstanding leases. A lease holds
the page references the engine handed over (FINISHED_HANDOFF) and the transport export of
those pages; ending a lease, by ack or by expiry, releases the export and gives the page
references back to the engine, exactly once.

Lifecycle of one lease: granted (TTL from now) -> renewed any number of times by the decode
worker that will pull it (RenewLease: another TTL from now) -> ended by the ack
(ReleaseLease), a router's give-up, or expiry (nobody renewed it: the peer is gone or stuck).
An ended lease is unknown here: a late renew or ack answers False, and the decode side then
discards whatever it read, since the pages may already hold another request's KV.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kv_transfer.pages import TransportBackend
from kv_transfer.transport_set import TransportSet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lease:
    transfer_id: str
    request_id: str
    page_ids: tuple[int, ...]
    expiry_unix_s: float
    backend: TransportBackend  # the transport that exported the pages


class LeaseTable:
    def __init__(
        self,
        transports: TransportSet,
        free_pages: Callable[[list[int]], None],
        ttl_s: float,
    ) -> None:
        """`free_pages` returns page references to the engine (it must not block on it)."""
        self._transports = transports
        self.ttl_s = ttl_s
        self._free_pages = free_pages
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self.num_expired = 0

    def grant(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.transfer_id] = lease

    def renew(self, transfer_id: str, now_unix_s: float | None = None) -> float | None:
        """Extends a lease to one TTL from now; returns its new expiry, None if unknown."""
        now = time.time() if now_unix_s is None else now_unix_s
        with self._lock:
            lease = self._leases.get(transfer_id)
            if lease is None:
                return None
            expiry = max(lease.expiry_unix_s, now + self.ttl_s)
            self._leases[transfer_id] = dataclasses.replace(lease, expiry_unix_s=expiry)
        return expiry

    def release(self, transfer_id: str) -> bool:
        """Ends a lease (the decode side's ack or a router's give-up); False if unknown."""
        with self._lock:
            lease = self._leases.pop(transfer_id, None)
        if lease is None:
            return False
        self._end(lease)
        return True

    def expire(self, now_unix_s: float | None = None) -> int:
        """Ends every lease past its expiry; returns how many."""
        now = time.time() if now_unix_s is None else now_unix_s
        with self._lock:
            expired = [lease for lease in self._leases.values() if lease.expiry_unix_s <= now]
            for lease in expired:
                del self._leases[lease.transfer_id]
        for lease in expired:
            log.warning("lease %s of %s expired unacked", lease.transfer_id, lease.request_id)
            self._end(lease)
        self.num_expired += len(expired)
        return len(expired)

    def release_all(self) -> None:
        with self._lock:
            leases, self._leases = list(self._leases.values()), {}
        for lease in leases:
            self._end(lease)

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def _end(self, lease: Lease) -> None:
        self._transports.release(lease.backend, lease.transfer_id)
        self._free_pages(list(reversed(lease.page_ids)))
