"""What both worker roles serve beside their own RPCs: page events, drain, health, metrics.

An actor builds one `WorkerEdge` before its engine (the engine's page pool feeds `events`),
`attach`es the engine once it exists (snapshots and health samples read it; health starts
then), serves `health.servicer` beside its own servicer, and hands the edge to that servicer,
which wraps each Prefill/Decode in `gate.serving()` and delegates WatchPageEvents and Drain
here. `close()` ends the watch streams and leaves health NOT_SERVING when the worker stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from engine.loop import EngineLoop
from pdserve.drain import DrainGate
from pdserve.page_events import PageEventLog, watch
from pdserve.v1 import worker_pb2
from pdserve.worker_config import WorkerConfig
from pdserve.worker_health import PoolProgress, WorkerHealth


class WorkerEdge:
    def __init__(self, epoch: int, config: WorkerConfig, holds_nothing: Callable[[], bool]):
        self.epoch = epoch
        self.events = PageEventLog()
        self.gate = DrainGate(
            config.drain_quiet_s,
            holds_nothing,
            max_running=config.max_grpc_threads - config.control_grpc_threads,
        )
        self.health = WorkerHealth(
            self.gate, self._progress, config.health_period_s, config.wedged_after_s
        )
        self._engine: EngineLoop | None = None

    def attach(self, engine: EngineLoop) -> None:
        """The engine whose pool `events` is fed by; snapshots and health samples are read on
        its thread. Health starts here."""
        self._engine = engine
        self.health.start()

    def watch_page_events(
        self, request: worker_pb2.WatchPageEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.PageEventBatch]:
        return watch(self.events, self._snapshot, self.epoch, request, context.is_active)

    def drain(self) -> worker_pb2.DrainResponse:
        self.gate.drain()
        self.health.refresh()  # NOT_SERVING now, not at the next sample
        return worker_pb2.DrainResponse(drained=self.gate.drained)

    def close(self) -> None:
        self.health.stop()
        self.events.close()

    def _snapshot(self) -> tuple[list[bytes], int]:
        assert self._engine is not None, "attach(engine) before serving"
        return self._engine.call(lambda core: (core.pool.held_hashes(), core.pool.last_seq))

    def _progress(self, timeout_s: float) -> PoolProgress:
        assert self._engine is not None, "attach(engine) before health starts"
        return self._engine.call(
            lambda core: PoolProgress(len(core.scheduler.waiting), core.num_steps), timeout_s
        )
