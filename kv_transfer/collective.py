"""KV transport over Ray collective groups: gloo (CPU, across nodes) and nccl (GPU).

The group: one KV group per cluster, its world every worker of the transfer group, ranks
assigned by the launcher. Every worker calls `join_kv_group(spec)` when it starts, all of them
concurrently (joining is collective), and `leave_kv_group(spec)` when it stops.

One transfer is a pull:
  1. export   (source) gather kv_cache[page_ids] into a staged contiguous buffer, pinned
              until release; the locator carries the source's rank and a fresh tag
  2. fetch    (destination) `request_send(handle, own_rank, remaining_s)`, which the worker
              wires to an internal RPC making the source call `send(transfer_id, dst_rank)`:
              that posts the send and returns; then post the matching recv and wait for it
  3. release  (source) drop the staged buffer (an in-flight send keeps it until it ends)

The recv is posted only once the source accepted, and then always (even past the deadline):
an accepted send always meets its recv, so no wait hangs on a live peer, and a late transfer
lands in the abandoned buffer. gloo: Ray's TorchGLOOGroup is the process's torch.distributed
world, but its send/recv block and carry no tag, so an abandoned recv would swallow the next
transfer; here isend/irecv run on that world with one tag per transfer, and waits run on
helper threads (a gloo wait with a timeout closes every pair of the process on expiry).
Limit: a send whose destination never posts the recv (its request_send timed out just as the
source accepted) is never matched; after torch's gloo timeout (30 min) gloo closes this
process's pairs, and the group must be re-formed as after a peer's epoch change.
nccl: ray.util.collective's NCCL p2p has no tags, a pair's sends and recvs match in order, so
recvs from one source are posted in request order and sends to one destination leave from one
ordered thread. Not runnable without GPUs on two devices.
"""

from __future__ import annotations

import itertools
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kv_transfer.checksum import (
    Integrity,
    Locator,
    page_index,
    scatter_rows,
)
from kv_transfer.exports import Deadline, Staged, StagedExports, StagedSource, start_fetch
from kv_transfer.pages import KVHandle, TransportBackend
from kv_transfer.transport import KVTransport, TransferError, TransferFailure, TransferState

RequestSend = Callable[[KVHandle, int, float], None]
"""(handle, dst_rank, timeout_s): make the source call `send(handle.transfer_id, dst_rank)`;
returns once the send is posted, raises if the source refused or did not answer in time."""

Wait = Callable[[], None]

_ADDRESS = struct.Struct("<ii")  # source rank, tag
# Tags name transfers on the process's one torch world, so they are unique per process, not
# per transport: a recv abandoned by an earlier transport must never match a later send.
_TAGS = itertools.count(1)
_DEVICE_TYPE = {TransportBackend.GLOO: "cpu", TransportBackend.NCCL: "cuda"}


@dataclass(frozen=True, slots=True)
class KVGroupSpec:
    """This worker's place in the cluster's KV group. `group_name` "default" lets Ray tear the
    torch world down on leave, so a group can be formed again (peer epoch change)."""

    backend: TransportBackend
    world_size: int
    rank: int
    group_name: str = "default"


def join_kv_group(spec: KVGroupSpec) -> None:
    """Blocks until all world_size ranks joined; call it inside the worker's Ray actor."""
    from ray.util import collective

    collective.init_collective_group(
        spec.world_size, spec.rank, spec.backend.value, spec.group_name
    )


def leave_kv_group(spec: KVGroupSpec) -> None:
    from ray.util import collective

    collective.destroy_collective_group(spec.group_name)


class _GlooLink:
    """torch.distributed p2p on the world Ray's gloo group initialized; tags keep transfers apart."""

    def post_send(self, buffer: torch.Tensor, dst_rank: int, tag: int) -> Wait:
        return dist.isend(buffer, dst_rank, tag=tag).wait

    def post_recv(self, buffer: torch.Tensor, src_rank: int, tag: int) -> Wait:
        return dist.irecv(buffer, src_rank, tag=tag).wait


class _NcclLink:
    """ray.util.collective NCCL p2p: posts are ordered per peer, waits sync the device."""

    def __init__(self, group_name: str) -> None:
        self._group = group_name
        self._senders: dict[int, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()

    def post_send(self, buffer: torch.Tensor, dst_rank: int, tag: int) -> Wait:
        from ray.util import collective

        # The first send to a peer blocks until the peer's recv joins the pair's communicator,
        # so it must not run on the caller's (RPC) thread.
        with self._lock:
            sender = self._senders.get(dst_rank) or ThreadPoolExecutor(1, "kv-nccl-send")
            self._senders[dst_rank] = sender
        posted = sender.submit(collective.send, buffer, dst_rank, self._group)
        return lambda: (posted.result(), collective.synchronize(buffer.device.index))

    def post_recv(self, buffer: torch.Tensor, src_rank: int, tag: int) -> Wait:
        from ray.util import collective

        collective.recv(buffer, src_rank, self._group)
        return lambda: collective.synchronize(buffer.device.index)


class CollectiveTransport(StagedSource, KVTransport):
    """Pull-based transport over the KV group this process joined (see join_kv_group)."""

    def __init__(
        self,
        backend: TransportBackend,
        *,
        rank: int,
        request_send: RequestSend,
        verify_checksum: bool = True,
        checksum_sample_rate: float = 1.0,
        group_name: str = "default",
        pool_bytes: int = 512 << 20,
    ) -> None:
        if backend not in _DEVICE_TYPE:
            raise ValueError(f"CollectiveTransport: backend must be gloo or nccl, not {backend}")
        self.backend = backend
        self._rank = rank
        self._request_send = request_send
        self.integrity = Integrity(verify_checksum, checksum_sample_rate)
        self._link = _GlooLink() if backend == TransportBackend.GLOO else _NcclLink(group_name)
        self._staged = StagedExports(pool_bytes)
        self._peer_locks: dict[int, threading.Lock] = {}

    def export(self, transfer_id: str, kv_cache: torch.Tensor, page_ids: Sequence[int]) -> bytes:
        self._check_device(kv_cache)
        index = page_index(page_ids, kv_cache.shape[0])
        buffer, rows = self._staged.stage(transfer_id, kv_cache, index, kv_cache.device)
        tag = next(_TAGS) % (1 << 31)
        locator = self.integrity.seal(
            transfer_id, rows, rows.numel(), _ADDRESS.pack(self._rank, tag)
        )
        self._staged.add(transfer_id, Staged(buffer, rows, tag))
        return locator.encode()

    def send(self, transfer_id: str, dst_rank: int) -> None:
        """Source side of a pull: posts the staged buffer's send to dst_rank and returns.

        Raises TransferError when transfer_id is released or unknown. Call it from the RPC that
        a destination's request_send reaches; the transfer is DONE once the peer received it.
        """
        staged = self._staged.hold(transfer_id)
        if staged is None:
            raise TransferError(f"{transfer_id}: released or never exported")
        wait = self._link.post_send(staged.rows, dst_rank, staged.key)
        self._staged.table.set_state(transfer_id, TransferState.TRANSFERRING)
        threading.Thread(target=self._settle, args=(transfer_id, staged, wait), daemon=True).start()

    def fetch(
        self,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        start = start_fetch(handle, kv_cache, dst_page_ids, timeout_s)
        deadline, locator, dst_index = start.deadline, start.locator, start.dst_index
        self._check_device(kv_cache)
        src_rank, tag = self._decode_address(locator, handle.transfer_id)
        deadline.check(handle.transfer_id)
        # filled by the recv
        buffer, rows = self._staged.take_rows(len(dst_page_ids), kv_cache, kv_cache.device)
        with self._peer_locks.setdefault(src_rank, threading.Lock()):
            self._ask_source(handle, deadline)
            wait = self._link.post_recv(rows, src_rank, tag)
        _wait_until(wait, deadline, handle.transfer_id)
        scatter_rows(
            kv_cache, dst_index, self.integrity.received(locator, rows, handle.transfer_id)
        )
        # Only a buffer whose recv completed is reused: an abandoned one may still be written.
        self._staged.give_back(buffer)

    def close(self) -> None:
        """Drops every staged buffer; leaving the KV group is the worker's (leave_kv_group)."""
        self._staged.close()

    def _ask_source(self, handle: KVHandle, deadline: Deadline) -> None:
        try:
            self._request_send(handle, self._rank, deadline.remaining_s())
        except Exception as exc:
            raise TransferError(f"{handle.transfer_id}: the source did not send: {exc}") from exc

    def _settle(self, transfer_id: str, staged: Staged, wait: Wait) -> None:
        try:
            wait()
        except Exception:
            self._staged.table.set_state(transfer_id, TransferState.FAILED)
        else:
            self._staged.table.set_state(transfer_id, TransferState.DONE)
        self._staged.let_go(staged)

    def _check_device(self, kv_cache: torch.Tensor) -> None:
        if kv_cache.device.type != _DEVICE_TYPE[self.backend]:
            raise TransferError(f"{self.backend} moves {_DEVICE_TYPE[self.backend]} kv caches only")

    def _decode_address(self, locator: Locator, transfer_id: str) -> tuple[int, int]:
        if len(locator.address) != _ADDRESS.size:
            raise TransferError(f"{transfer_id}: malformed {self.backend} locator")
        src_rank, tag = _ADDRESS.unpack(locator.address)
        if src_rank == self._rank:
            raise TransferError(f"{transfer_id}: a rank cannot pull from itself")
        return src_rank, tag


def _wait_until(wait: Wait, deadline: Deadline, transfer_id: str) -> None:
    """Runs `wait` on a helper thread and gives up on it at the deadline (it may finish later)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            wait()
        except BaseException as exc:  # reported to the caller, not lost in the thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=f"kv-recv-{transfer_id}", daemon=True).start()
    # A receive that only completes after the deadline fails too, even when it wins the race
    # against this check; it stays posted so a late send lands in its own (abandoned) buffer.
    remaining_s = deadline.remaining_s()
    if remaining_s <= 0 or not done.wait(remaining_s):
        raise TransferError(
            f"{transfer_id}: deadline passed while receiving", TransferFailure.TIMEOUT
        )
    if failure:
        raise TransferError(f"{transfer_id}: receive failed: {failure[0]}") from failure[0]
