"""One request's engine outputs, handed from the engine loop thread to its gRPC stream."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.core import RequestOutput
from engine.request import RequestStatus

_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """A copy of what the engine produced: the loop thread keeps mutating its Request."""

    token_ids: tuple[int, ...]
    status: RequestStatus
    stop_token_id: int | None
    num_cached_tokens: int
    queue_s: float
    prefill_s: float
    step_s: float  # the engine step that made these tokens

    @classmethod
    def of(cls, output: RequestOutput) -> StreamEvent:
        req = output.request
        started = req.first_scheduled_s or req.arrival_s
        return cls(
            token_ids=tuple(output.new_token_ids),
            status=req.status,
            stop_token_id=req.stop_token_id,
            num_cached_tokens=req.num_cached_tokens,
            queue_s=started - req.arrival_s,
            prefill_s=time.monotonic() - started,
            step_s=output.step_s,
        )


class StreamTimeout(TimeoutError):
    pass


class OutputStream:
    def __init__(self) -> None:
        self._events: queue.SimpleQueue[StreamEvent] = queue.SimpleQueue()

    def put(self, output: RequestOutput) -> None:
        """The engine sink: runs on the loop thread, only copies and enqueues."""
        self._events.put(StreamEvent.of(output))

    def batches(
        self, deadline_s: float, is_active: Callable[[], bool]
    ) -> Iterator[list[StreamEvent]]:
        """Yields every event available at once (coalesced) until one is final.

        Stops silently when `is_active()` turns False (the caller went away); raises
        StreamTimeout at the monotonic `deadline_s`.
        """
        while is_active():
            if time.monotonic() >= deadline_s:
                raise StreamTimeout
            try:
                batch = [self._events.get(timeout=_POLL_S)]
            except queue.Empty:
                continue
            batch += self._drain()
            yield batch
            if batch[-1].status.is_finished:
                return

    def _drain(self) -> list[StreamEvent]:
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events
