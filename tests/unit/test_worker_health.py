"""Worker health: NOT_SERVING while draining or while the page pool cannot admit work."""

from __future__ import annotations

import threading
import time

from grpc_health.v1 import health_pb2

from engine.core import EngineCore
from engine.loop import EngineLoop
from engine.page_pool import PagePool
from engine.request import Request, SamplingParams
from engine.scheduler import SchedulerConfig
from pdserve.drain import DrainGate
from pdserve.worker_config import WorkerConfig
from pdserve.worker_edge import WorkerEdge
from pdserve.worker_health import SERVICES, AdmissionWatch, PoolProgress, WorkerHealth
from tests.doubles.token_runner import TokenRunner

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def statuses(health: WorkerHealth) -> set[int]:
    request = health_pb2.HealthCheckRequest
    return {health.servicer.Check(request(service=s), None).status for s in SERVICES}


def test_waiting_work_without_a_step_past_the_threshold_is_a_wedged_pool():
    clock = Clock()
    watch = AdmissionWatch(wedged_after_s=5.0, clock=clock)
    watch.observe(PoolProgress(num_waiting=2, num_steps=7))
    clock.now += 4.9
    watch.observe(PoolProgress(num_waiting=2, num_steps=7))
    assert watch.can_admit
    clock.now += 0.1
    assert not watch.can_admit


def test_a_step_while_requests_wait_restarts_the_stall_clock():
    """Waiting behind running requests that still step is load, not a wedge."""
    clock = Clock()
    watch = AdmissionWatch(wedged_after_s=5.0, clock=clock)
    watch.observe(PoolProgress(num_waiting=2, num_steps=7))
    clock.now += 4.0
    watch.observe(PoolProgress(num_waiting=2, num_steps=8))
    clock.now += 4.0
    assert watch.can_admit


def test_an_idle_engine_without_steps_can_admit_and_a_wedge_that_clears_recovers():
    clock = Clock()
    watch = AdmissionWatch(wedged_after_s=5.0, clock=clock)
    watch.observe(PoolProgress(num_waiting=1, num_steps=3))
    clock.now += 6.0
    assert not watch.can_admit
    watch.observe(PoolProgress(num_waiting=0, num_steps=4))
    clock.now += 60.0
    watch.observe(PoolProgress(num_waiting=0, num_steps=4))
    assert watch.can_admit


def test_a_failed_integrity_check_means_the_pool_cannot_admit():
    watch = AdmissionWatch(wedged_after_s=5.0)
    watch.note_integrity(False)
    assert not watch.can_admit
    watch.note_integrity(True)
    assert watch.can_admit


def test_drain_turns_every_service_not_serving_without_asking_the_engine():
    gate = DrainGate(quiet_s=1.0)
    health = WorkerHealth(gate, lambda timeout_s: PoolProgress(0, 0), 60.0, 5.0)
    health.start()
    assert statuses(health) == {SERVING}
    gate.drain()
    health.refresh()
    assert statuses(health) == {NOT_SERVING}
    health.stop()


def test_the_sampling_thread_sees_a_wedge_and_its_end():
    progress = PoolProgress(num_waiting=1, num_steps=5)
    health = WorkerHealth(DrainGate(1.0), lambda timeout_s: progress, 0.02, 0.1)
    health.start()
    time.sleep(0.3)
    assert statuses(health) == {NOT_SERVING}
    progress = PoolProgress(num_waiting=0, num_steps=6)
    time.sleep(0.1)
    assert statuses(health) == {SERVING}
    health.stop()
    assert statuses(health) == {NOT_SERVING}


def test_a_probe_that_times_out_keeps_a_stall_counting():
    """The engine thread stuck in one step answers no probe: that is no progress either."""
    answers = iter([PoolProgress(num_waiting=1, num_steps=5)])

    def probe(timeout_s: float) -> PoolProgress:
        answer = next(answers, None)
        if answer is None:
            raise TimeoutError
        return answer

    health = WorkerHealth(DrainGate(1.0), probe, 0.02, 0.1)
    health.start()
    time.sleep(0.3)
    assert statuses(health) == {NOT_SERVING}
    health.stop()


def test_an_engine_whose_pool_is_held_by_pages_it_cannot_free_reports_not_serving():
    """Pinned pages (as leases pin them) leave a request waiting with no step: the worker's
    health says NOT_SERVING, and SERVING again once the pages are released and it runs."""
    core = EngineCore(TokenRunner(8, 4), PagePool(8, 4), SchedulerConfig())
    loop = EngineLoop(core)
    loop.start()
    config = WorkerConfig(worker_id="w0", health_period_s=0.02, wedged_after_s=0.2)
    edge = WorkerEdge(1, config, holds_nothing=lambda: True)
    edge.attach(loop)
    held = loop.call(lambda core: core.pool.allocate(8))
    finished = threading.Event()
    request = Request("r0", [1, 2, 3, 4, 5], SamplingParams(max_tokens=4))
    loop.submit(request, lambda output: output.finished and finished.set())
    time.sleep(0.5)
    assert statuses(edge.health) == {NOT_SERVING}
    loop.post(lambda core: core.pool.free(held))
    assert finished.wait(5.0)
    time.sleep(0.1)
    assert statuses(edge.health) == {SERVING}
    edge.close()
    loop.stop()
