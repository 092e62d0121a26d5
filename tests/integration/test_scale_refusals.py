"""Scale refusals and drain edge cases that need no cluster: pdserve.scaling alone.

A formed gloo KV group may shrink but not grow (FAILED_PRECONDITION at the service), and a
target that would leave no route is invalid. Against fakes (`FakePools`, a router that
never reports drained): a worker never drained is stopped at the drain timeout and reported
so, a Scale while one runs is busy, and a Scale whose caller left still finishes.
"""

from __future__ import annotations

import asyncio

import pytest

from kv_transfer.pages import Role
from pdserve.scaling import (
    InvalidScale,
    PoolScaler,
    PoolSizes,
    ScaleBusy,
    ScaleRefused,
    ScaleTarget,
    target_sizes,
)


def test_a_formed_kv_group_cannot_grow_but_may_shrink():
    """transport gloo: the group's ranks are fixed at start."""
    current = PoolSizes(num_prefill=2, num_decode=2)
    with pytest.raises(ScaleRefused, match="^num_decode: transport gloo"):
        target_sizes(current, ScaleTarget(num_prefill=1, num_decode=3), can_grow=False)
    assert target_sizes(current, ScaleTarget(num_decode=1), can_grow=False) == PoolSizes(2, 1, 0)


def test_swapping_pools_for_a_colocated_worker_keeps_a_route():
    current = PoolSizes(num_prefill=1, num_decode=1)
    target = ScaleTarget(num_prefill=0, num_decode=0, num_colocated=1)
    assert target_sizes(current, target, can_grow=True) == PoolSizes(0, 0, 1)
    with pytest.raises(InvalidScale, match="^num_colocated: the pools would leave no route"):
        target_sizes(PoolSizes(num_colocated=1), ScaleTarget(num_colocated=0), can_grow=True)


class FakePools:
    """WorkerPools over a list of ids ("prefill-0", …); records what was spawned and stopped."""

    can_grow = True

    def __init__(self, *worker_ids: str) -> None:
        self.roles = {worker_id: Role(worker_id.split("-")[0]) for worker_id in worker_ids}
        self.stopped: list[str] = []

    def sizes(self) -> PoolSizes:
        return PoolSizes.of_roles(list(self.roles.values()))

    def worker_ids(self) -> list[str]:
        return list(self.roles)

    def newest(self, role: Role, count: int) -> list[str]:
        return [w for w, r in self.roles.items() if r is role][::-1][:count]

    async def spawn(self, roles):
        raise AssertionError("these scenarios only shrink")

    async def stop_worker(self, worker_id: str) -> None:
        self.stopped.append(worker_id)
        del self.roles[worker_id]


class NeverDrainedRouter:
    """A router whose workers stay busy: drain_worker never reports drained."""

    def __init__(self) -> None:
        self.num_drain_calls = 0
        self.removed: list[str] = []

    async def drain_worker(self, worker_id: str) -> bool:
        self.num_drain_calls += 1
        return False

    async def remove_worker(self, worker_id: str) -> None:
        self.removed.append(worker_id)


async def test_a_worker_not_drained_by_the_timeout_is_stopped_anyway_and_reported():
    pools, router = FakePools("prefill-0", "decode-0", "decode-1"), NeverDrainedRouter()
    scaler = PoolScaler(pools, router, drain_timeout_s=0.3, drain_poll_s=0.05)
    response = await scaler.scale(ScaleTarget(num_decode=1))
    (removed,) = response.removed
    assert (removed.worker_id, removed.drained) == ("decode-1", False)
    assert removed.drain_s >= 0.3 and router.num_drain_calls >= 5
    assert (router.removed, pools.stopped) == (["decode-1"], ["decode-1"])
    assert list(response.pools.worker_ids) == ["prefill-0", "decode-0"]


async def test_a_scale_while_one_runs_is_busy_and_one_whose_caller_left_still_finishes():
    pools, router = FakePools("prefill-0", "prefill-1", "decode-0"), NeverDrainedRouter()
    scaler = PoolScaler(pools, router, drain_timeout_s=0.3, drain_poll_s=0.05)
    caller = asyncio.create_task(scaler.scale(ScaleTarget(num_prefill=1)))
    await asyncio.sleep(0.1)
    with pytest.raises(ScaleBusy):
        await scaler.scale(ScaleTarget(num_decode=2))
    caller.cancel()
    await asyncio.sleep(0.5)
    assert caller.cancelled()
    assert (router.removed, pools.stopped) == (["prefill-1"], ["prefill-1"])
    assert (await scaler.scale(ScaleTarget())).pools.worker_ids == ["prefill-0", "decode-0"]
