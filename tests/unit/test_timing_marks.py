"""A request's timing marks: the first decode update carries the leg's figures."""

from __future__ import annotations

from router.events import TimingMarks
from router.worker_wire import DecodeUpdate


def update(prefill_s: float, kv_transfer_s: float = 0.0, cached: int = 0) -> DecodeUpdate:
    return DecodeUpdate((7,), False, None, None, kv_transfer_s, cached, 0.01, prefill_s)


def test_colocated_prefill_time_is_the_first_updates_not_the_streams_length():
    marks = TimingMarks()
    marks.take_decode(update(0.2, cached=32), colocated=True)
    for later in (1.5, 2.7):  # later chunks report the time since scheduling
        marks.take_decode(update(later, cached=32), colocated=True)
    timing = marks.timing(received_s=0.0)
    assert (timing.prefill_s, marks.cached_tokens) == (0.2, 32)


def test_a_handoff_keeps_the_prefill_legs_figures_and_the_first_transfer_time():
    marks = TimingMarks()
    marks.take_prefill(queue_s=0.05, prefill_s=0.3, cached_tokens=16)
    marks.take_decode(update(9.0, kv_transfer_s=0.002), colocated=False)
    marks.take_decode(update(9.5), colocated=False)
    assert (marks.prefill_s, marks.cached_tokens, marks.kv_transfer_s) == (0.3, 16, 0.002)
