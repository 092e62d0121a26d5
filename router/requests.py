"""The table of requests in flight: bounded admission, unique ids, and Abort by id.

A Generate handler is admitted before its first worker call and leaves the table when it
ends, however it ends. There is no queue: a request beyond the cap is refused at once
(Overloaded -> RESOURCE_EXHAUSTED with a retry hint).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from router.errors import DuplicateRequestId, Overloaded


@dataclass(slots=True, eq=False)
class InFlight:
    request_id: str
    task: asyncio.Task  # the Generate handler serving it
    abort_requested: bool = False  # set by Abort(request_id); the handler ends CANCELLED


class RequestTable:
    """The only owner of the in-flight table. Use from the server's event loop."""

    def __init__(self, max_in_flight: int, retry_after_s: float) -> None:
        self._max_in_flight = max_in_flight
        self._retry_after_s = retry_after_s
        self._entries: dict[str, InFlight] = {}

    @property
    def num_in_flight(self) -> int:
        return len(self._entries)

    @contextmanager
    def admitted(self, request_id: str) -> Iterator[InFlight]:
        """Admits the current task under `request_id` for the duration of the block.

        Raises DuplicateRequestId if the id is in flight, Overloaded if the table is full.
        """
        if request_id in self._entries:
            raise DuplicateRequestId()
        if len(self._entries) >= self._max_in_flight:
            raise Overloaded(
                f"{self._max_in_flight} requests already in flight", self._retry_after_s
            )
        entry = InFlight(request_id, asyncio.current_task())
        self._entries[request_id] = entry
        try:
            yield entry
        finally:
            del self._entries[request_id]

    def abort(self, request_id: str) -> bool:
        """Cancels the request's handler (once). Returns whether the id was in flight."""
        entry = self._entries.get(request_id)
        if entry is None:
            return False
        if not entry.abort_requested:
            entry.abort_requested = True
            entry.task.cancel()
        return True

    def check_integrity(self) -> None:
        """Raises AssertionError if the table breaks its cap or files an entry wrongly."""
        assert len(self._entries) <= self._max_in_flight, len(self._entries)
        for request_id, entry in self._entries.items():
            assert entry.request_id == request_id, (request_id, entry.request_id)
