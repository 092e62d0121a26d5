"""What both worker roles serve beside their own RPCs: page events, drain, metrics.

An actor builds one `WorkerEdge` before its engine (the engine's page pool feeds `events`),
points `snapshot` at the engine once it exists, and hands the edge to its servicer, which
wraps each Prefill/Decode in `gate.serving()` and delegates WatchPageEvents and Drain here.
`close()` ends the watch streams when the worker stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from engine.loop import EngineLoop
from pdserve.drain import DrainGate
from pdserve.page_events import PageEventLog, watch
from pdserve.v1 import worker_pb2


class WorkerEdge:
    def __init__(self, epoch: int, drain_quiet_s: float, holds_nothing: Callable[[], bool]):
        self.epoch = epoch
        self.events = PageEventLog()
        self.gate = DrainGate(drain_quiet_s, holds_nothing)
        self._engine: EngineLoop | None = None

    def attach(self, engine: EngineLoop) -> None:
        """The engine whose pool `events` is fed by; snapshots are read on its thread."""
        self._engine = engine

    def watch_page_events(
        self, request: worker_pb2.WatchPageEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[worker_pb2.PageEventBatch]:
        return watch(self.events, self._snapshot, self.epoch, request, context.is_active)

    def drain(self) -> worker_pb2.DrainResponse:
        self.gate.drain()
        return worker_pb2.DrainResponse(drained=self.gate.drained)

    def close(self) -> None:
        self.events.close()

    def _snapshot(self) -> tuple[list[bytes], int]:
        assert self._engine is not None, "attach(engine) before serving"
        return self._engine.call(lambda core: (core.pool.held_hashes(), core.pool.last_seq))
