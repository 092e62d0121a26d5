"""Draining a worker through the router: routing stops at once, and a request routed to a
decode worker before its drain began still completes — on another decode worker."""

from __future__ import annotations

import asyncio

from kv_transfer.pages import Role
from pdserve.v1 import generation_pb2 as pb
from tests.doubles.mock_worker import MockBehavior, MockWorker, WorkerMethod
from tests.doubles.router_cluster import router_cluster


def request(n: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        tokens=pb.TokenInput(token_ids=list(range(100, 100 + n))),
        sampling=pb.SamplingParams(max_tokens=4),
    )


async def test_a_request_in_prefill_moves_off_a_decode_worker_that_began_draining(smollm2_dir):
    prefill = MockWorker("p0", Role.PREFILL, MockBehavior(prefill_delay_s=0.5))
    decodes = [MockWorker("d0", Role.DECODE), MockWorker("d1", Role.DECODE)]
    async with router_cluster(smollm2_dir, [prefill, *decodes]) as cluster:
        pending = asyncio.create_task(cluster.generate(request(40)))
        while not prefill.calls_of(WorkerMethod.PREFILL):
            await asyncio.sleep(0.005)
        routed_to = "d0"  # idle decode workers tie: the lowest id
        assert not await cluster.router.drain_worker(routed_to)  # the route still counts
        final = (await pending)[-1].final
        assert final.decode_worker_id == "d1"
        assert cluster.workers[routed_to].calls_of(WorkerMethod.DECODE) == []
        later = (await cluster.generate(request(41)))[-1].final
        assert later.decode_worker_id == "d1"
        for worker in cluster.workers.values():
            worker.check_idle()
