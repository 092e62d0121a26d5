"""The decode side of one lease: kept alive while the pull waits, settled by the ack.

Lifecycle, for one handed-off request (decode_worker/scheduler.py drives it):
  1. created     from the handle: the source pins the pages until `expiry` (unix s)
  2. keep_alive  called while the pull waits (for pages, before the fetch): once half of the
                 lease's time is gone it renews (RenewLease: another TTL on the source); a
                 source that no longer holds the lease ends the request (LeaseExpired)
  3. settle      after the fetch, successful or not: the ack (ReleaseLease). The pages read
                 are trusted only if the source still held the lease until the ack — or, when
                 the source does not answer (dead), if the lease had not yet expired. Otherwise
                 the source may have freed and reused those pages while they were read.
                 A fetch that itself proved the export held through the copy (shm: the
                 segment's token, checked after it) is trusted at once, and the ack sent in the
                 background: it then only frees the source's pages, off the request's path.
"""

from __future__ import annotations

import time

import grpc

from decode_worker.prefill_peers import Ack, PrefillPeers
from kv_transfer.pages import KVHandle


class LeaseExpired(RuntimeError):
    """The source's lease ended before the pull was acked: what was read is discarded."""


class LeaseKeeper:
    def __init__(self, peers: PrefillPeers, handle: KVHandle, src_address: str) -> None:
        self._peers = peers
        self._transfer_id = handle.transfer_id
        self._address = src_address
        self.expiry_unix_s = handle.lease_expiry_unix_s
        # renew once less than half of the time the lease had on arrival is left
        self._margin_s = max(self.expiry_unix_s - time.time(), 0.0) / 2

    def keep_alive(self) -> None:
        """Renews the lease when due. Raises LeaseExpired when the source no longer holds it,
        or does not answer and the lease is past its expiry."""
        now = time.time()
        if self.expiry_unix_s - now > self._margin_s:
            return
        try:
            expiry = self._peers.renew(self._address, self._transfer_id)
        except grpc.RpcError:
            if now >= self.expiry_unix_s:
                raise LeaseExpired(f"{self._transfer_id}: source gone, lease expired") from None
            return  # the source may be busy; the pull itself will tell
        if expiry is None:
            raise LeaseExpired(f"{self._transfer_id}: the source no longer holds the lease")
        self.expiry_unix_s = expiry

    def settle(self, proven: bool = False) -> bool:
        """Acks the lease; returns whether what was read under it can be trusted. `proven`:
        the fetch proved the export held through the copy, so the ack is not waited for."""
        if proven:
            self._peers.ack_soon(self._address, self._transfer_id)
            return True
        ack = self._peers.ack(self._address, self._transfer_id)
        if ack is Ack.RELEASED:
            return True
        return ack is Ack.UNREACHABLE and time.time() < self.expiry_unix_s
