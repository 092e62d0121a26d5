"""Stop strings over a stream of text deltas whose chunk boundaries fall anywhere.

Text is released only once no stop string can begin in it: the longest suffix of the
unreleased text that is a prefix of some stop string is held back. On a match the text
before the earliest-starting stop string is released and nothing after it ever is (the
stop string itself is not part of the output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopScan:
    text: str  # safe to send now
    stop: str | None = None  # the stop string that ended the output, if one matched


class StopStringMatcher:
    """One request's stop-string state. After a match every later push returns nothing."""

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(stops)
        self._pending = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    def push(self, text: str) -> StopScan:
        """Adds `text`; returns what may be released and the stop string if one completed."""
        if self._matched is not None:
            return StopScan("")
        buffer = self._pending + text
        start, stop = self._earliest_match(buffer)
        if stop is not None:
            self._matched, self._pending = stop, ""
            return StopScan(buffer[:start], stop)
        held = self._held_suffix_len(buffer)
        self._pending = buffer[len(buffer) - held :]
        return StopScan(buffer[: len(buffer) - held])

    def flush(self) -> str:
        """At the end of the stream: the held-back text (no stop string completed in it)."""
        pending, self._pending = self._pending, ""
        return pending

    def _earliest_match(self, buffer: str) -> tuple[int, str | None]:
        # Earliest start wins; at one start the stop listed first wins.
        best_start, best_stop = len(buffer), None
        for stop in self._stops:
            start = buffer.find(stop)
            if start != -1 and start < best_start:
                best_start, best_stop = start, stop
        return best_start, best_stop

    def _held_suffix_len(self, buffer: str) -> int:
        longest = max((len(stop) for stop in self._stops), default=1)
        for size in range(min(len(buffer), longest - 1), 0, -1):
            suffix = buffer[-size:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return size
        return 0
