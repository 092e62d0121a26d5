"""Leases on both sides: the prefill worker's LeaseTable (grant, renew, release, expiry) and
the decode worker's LeaseKeeper (keep-alive while waiting, trust decided at the ack)."""

from __future__ import annotations

import time

import grpc
import pytest

from decode_worker.lease_keeper import LeaseExpired, LeaseKeeper
from decode_worker.prefill_peers import Ack
from kv_transfer.pages import KVHandle, KVLayout, TransportBackend
from prefill_worker.leases import Lease, LeaseTable

LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=4, page_size=4, dtype="float32")


class Transports:
    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, backend: TransportBackend, transfer_id: str) -> None:
        self.released.append(transfer_id)


def table(ttl_s: float = 10.0) -> tuple[LeaseTable, Transports, list[int]]:
    transports, freed = Transports(), []
    return LeaseTable(transports, freed.extend, ttl_s), transports, freed


def lease(transfer_id: str = "t1", expiry: float = 100.0) -> Lease:
    return Lease(transfer_id, "r1", (3, 4), expiry, TransportBackend.SHM)


def test_renew_extends_a_held_lease_by_one_ttl_from_now():
    leases, _, _ = table(ttl_s=10.0)
    leases.grant(lease(expiry=100.0))
    assert leases.renew("t1", now_unix_s=95.0) == 105.0
    assert leases.expire(now_unix_s=104.0) == 0
    assert leases.expire(now_unix_s=105.0) == 1


def test_renew_never_shortens_a_lease():
    leases, _, _ = table(ttl_s=10.0)
    leases.grant(lease(expiry=100.0))
    assert leases.renew("t1", now_unix_s=50.0) == 100.0


def test_an_ended_lease_cannot_be_renewed_or_released_and_is_freed_once():
    leases, transports, freed = table()
    leases.grant(lease(expiry=100.0))
    assert leases.expire(now_unix_s=101.0) == 1
    assert leases.renew("t1", now_unix_s=101.0) is None
    assert leases.release("t1") is False
    assert transports.released == ["t1"] and freed == [4, 3]


class Peers:
    """PrefillPeers' renew and ack, scripted."""

    def __init__(self, renewed: float | None | Exception = None, ack: Ack = Ack.RELEASED):
        self.renewed, self._ack = renewed, ack
        self.renewals = 0

    def renew(self, address: str, transfer_id: str) -> float | None:
        self.renewals += 1
        if isinstance(self.renewed, Exception):
            raise self.renewed
        return self.renewed

    def ack(self, address: str, transfer_id: str) -> Ack:
        return self._ack


def handle(expires_in_s: float) -> KVHandle:
    return KVHandle(
        transfer_id="t1",
        src_worker_id="p0",
        src_epoch=1,
        page_ids=(0,),
        num_tokens=4,
        layout=LAYOUT,
        lease_expiry_unix_s=time.time() + expires_in_s,
        backend=TransportBackend.SHM,
    )


def test_the_keeper_renews_only_once_half_the_lease_is_gone():
    peers = Peers(renewed=time.time() + 60)
    keeper = LeaseKeeper(peers, handle(expires_in_s=30), "p0:1")
    keeper.keep_alive()
    assert peers.renewals == 0
    keeper.expiry_unix_s = time.time() + 10  # 20 of its 30 s gone
    keeper.keep_alive()
    assert peers.renewals == 1 and keeper.expiry_unix_s > time.time() + 50


def test_a_lease_the_source_no_longer_holds_ends_the_wait():
    keeper = LeaseKeeper(Peers(renewed=None), handle(expires_in_s=0.0), "p0:1")
    with pytest.raises(LeaseExpired):
        keeper.keep_alive()


def test_an_unreachable_source_is_waited_on_until_the_lease_expires():
    silent = Peers(renewed=grpc.RpcError())
    keeper = LeaseKeeper(silent, handle(expires_in_s=30), "p0:1")
    keeper.expiry_unix_s = time.time() + 1  # due for renewal, not yet expired
    keeper.keep_alive()
    assert silent.renewals == 1
    with pytest.raises(LeaseExpired):
        LeaseKeeper(silent, handle(expires_in_s=-1.0), "p0:1").keep_alive()


@pytest.mark.parametrize(
    ("ack", "expires_in_s", "trusted"),
    [
        (Ack.RELEASED, -5.0, True),  # the source held it until the ack, late or not
        (Ack.UNKNOWN, 30.0, False),  # ended early (e.g. released): the pages may be reused
        (Ack.UNREACHABLE, 30.0, True),  # a dead source reuses nothing before its expiry
        (Ack.UNREACHABLE, -1.0, False),
    ],
)
def test_what_was_read_is_trusted_only_under_a_lease_held_until_the_ack(ack, expires_in_s, trusted):
    keeper = LeaseKeeper(Peers(ack=ack), handle(expires_in_s), "p0:1")
    assert keeper.settle() is trusted


def test_a_pull_the_fetch_proved_is_trusted_at_once_and_acked_in_the_background():
    class Recording(Peers):
        def __init__(self) -> None:
            super().__init__(ack=Ack.UNKNOWN)
            self.soon: list[str] = []

        def ack(self, address: str, transfer_id: str) -> Ack:
            raise AssertionError("a proven pull never waits for the ack")

        def ack_soon(self, address: str, transfer_id: str) -> None:
            self.soon.append(transfer_id)

    peers = Recording()
    assert LeaseKeeper(peers, handle(expires_in_s=30), "p0:1").settle(proven=True)
    assert peers.soon == ["t1"]
