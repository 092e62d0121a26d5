"""The KV transport contract over gloo between two Ray actors of one KV group, plus what only a
pull across processes can show: a late source, and the source's view of a finished send.

Rank 0 ("prefill-0") exports, rank 1 ("decode-0") fetches; the destination's request_send is
a Ray call to the source actor's `send`, standing in for the workers' internal RPC.
"""

from __future__ import annotations

import time

import pytest
import torch

from kv_transfer.pages import TransportBackend
from kv_transfer.transport import TransferError, TransferState
from tests.unit.test_transport_contract import (
    DST_PAGES,
    SRC_PAGES,
    TransportContract,
    make_cache,
    make_handle,
    make_layout,
    with_wrong_checksum,
)

NAMES = ("prefill-0", "decode-0")


class TransferActor:
    """One worker's side of the KV group: joins it, then exports, sends or fetches."""

    def __init__(self, rank: int) -> None:
        from kv_transfer.collective import KVGroupSpec

        self.spec = KVGroupSpec(TransportBackend.GLOO, world_size=len(NAMES), rank=rank)
        self.send_delay_s = 0.0

    def join(self) -> None:
        from kv_transfer.collective import join_kv_group

        join_kv_group(self.spec)
        self.reset()

    def reset(self, send_delay_s: float = 0.0) -> None:
        """A fresh transport on the joined group; request_send waits send_delay_s first."""
        from kv_transfer.collective import CollectiveTransport

        self.send_delay_s = send_delay_s
        self.transport = CollectiveTransport(
            TransportBackend.GLOO, rank=self.spec.rank, request_send=self._request_send
        )

    def _request_send(self, handle, dst_rank: int, timeout_s: float) -> None:
        import ray

        time.sleep(self.send_delay_s)
        source = ray.get_actor(handle.src_worker_id)
        ray.get(source.send.remote(handle.transfer_id, dst_rank), timeout=max(timeout_s, 1.0))

    def call(self, method: str, *args):
        return getattr(self.transport, method)(*args)

    def send(self, transfer_id: str, dst_rank: int) -> None:
        self.transport.send(transfer_id, dst_rank)

    def fetch(self, handle, kv_cache: torch.Tensor, timeout_s: float):
        try:
            self.transport.fetch(handle, kv_cache, DST_PAGES, timeout_s)
        except TransferError as exc:
            return exc
        return kv_cache

    def leave(self) -> None:
        from kv_transfer.collective import leave_kv_group

        self.transport.close()
        leave_kv_group(self.spec)


class ActorTransport:
    """The source actor's transport, called as if it were local."""

    def __init__(self, actor) -> None:
        self._actor = actor

    def __getattr__(self, method: str):
        import ray

        return lambda *args: ray.get(self._actor.call.remote(method, *args))


@pytest.fixture(scope="module")
def gloo_actors(ray_cluster):
    remote = ray_cluster.remote(max_concurrency=4)(TransferActor)
    actors = [remote.options(name=name).remote(rank) for rank, name in enumerate(NAMES)]
    ray_cluster.get([actor.join.remote() for actor in actors])
    yield actors
    ray_cluster.get([actor.leave.remote() for actor in actors])
    for actor in actors:
        ray_cluster.kill(actor)


class GlooPair:
    backend = TransportBackend.GLOO

    def __init__(self, ray, actors, send_delay_s: float = 0.0) -> None:
        self.ray, (self.src_actor, self.dst_actor) = ray, actors
        ray.get([actor.reset.remote(send_delay_s) for actor in actors])
        self.source = ActorTransport(self.src_actor)

    def export(self, transfer_id, kv_cache, layout):
        locator = self.source.export(transfer_id, kv_cache, SRC_PAGES)
        return make_handle(transfer_id, layout, locator, self.backend)

    def fetch(self, handle, kv_cache, timeout_s=5.0):
        answer = self.ray.get(self.dst_actor.fetch.remote(handle, kv_cache, timeout_s))
        if isinstance(answer, TransferError):
            raise answer
        return answer

    def corrupt(self, handle):
        return with_wrong_checksum(handle)

    def leftovers(self):
        return []


class TestGlooContract(TransportContract):
    @pytest.fixture
    def pair(self, ray_cluster, gloo_actors):
        return GlooPair(ray_cluster, gloo_actors)


def test_a_source_later_than_the_deadline_fails_the_fetch_and_spares_the_next(
    ray_cluster, gloo_actors
):
    """The fetch gives up at its deadline; the late send then fills the abandoned buffer (its own
    tag), so the pair's next transfer arrives intact."""
    layout = make_layout()
    late = GlooPair(ray_cluster, gloo_actors, send_delay_s=1.5)
    started = time.monotonic()
    with pytest.raises(TransferError, match="deadline"):
        late.fetch(
            late.export("t-late-source", make_cache(layout, seed=1), layout),
            make_cache(layout, seed=2),
            1.0,
        )
    assert time.monotonic() - started < 3.0
    pair = GlooPair(ray_cluster, gloo_actors)
    src = make_cache(layout, seed=3)
    fetched = pair.fetch(pair.export("t-after-late", src, layout), make_cache(layout, seed=4))
    assert torch.equal(fetched[list(DST_PAGES)], src[list(SRC_PAGES)])


def test_the_source_sees_done_once_the_destination_received(ray_cluster, gloo_actors):
    layout = make_layout()
    pair = GlooPair(ray_cluster, gloo_actors)
    pair.fetch(
        pair.export("t-done", make_cache(layout, seed=1), layout), make_cache(layout, seed=2)
    )
    deadline = time.monotonic() + 5.0
    while pair.source.state("t-done") != TransferState.DONE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pair.source.state("t-done") == TransferState.DONE
