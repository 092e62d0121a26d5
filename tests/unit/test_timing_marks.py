"""A request's timing marks: the first decode update carries the leg's figures."""

from __future__ import annotations

import time

from router.events import TimingMarks
from router.worker_wire import DecodeUpdate, PrefillResult


def update(
    prefill_s: float, kv_transfer_s: float = 0.0, cached: int = 0, step_s: float = 0.0
) -> DecodeUpdate:
    return DecodeUpdate((7,), False, None, None, kv_transfer_s, cached, 0.01, prefill_s, step_s)


def prefill(first_token_unix_s: float = 0.0) -> PrefillResult:
    return PrefillResult(3, None, False, 16, 0.05, 0.3, first_token_unix_s)


def test_colocated_prefill_time_is_the_first_updates_not_the_streams_length():
    marks = TimingMarks()
    marks.take_decode(update(0.2, cached=32), colocated=True)
    for later in (1.5, 2.7):  # later chunks report the time since scheduling
        marks.take_decode(update(later, cached=32), colocated=True)
    timing = marks.timing(received_s=0.0)
    assert (timing.prefill_s, marks.cached_tokens) == (0.2, 32)


def test_a_handoff_keeps_the_prefill_legs_figures_and_the_first_transfer_time():
    marks = TimingMarks()
    marks.take_prefill(prefill())
    marks.take_decode(update(9.0, kv_transfer_s=0.002), colocated=False)
    marks.take_decode(update(9.5), colocated=False)
    assert (marks.prefill_s, marks.cached_tokens, marks.kv_transfer_s) == (0.3, 16, 0.002)


def test_handover_runs_from_token_1_sampled_to_token_2_here_less_its_decode_step():
    marks = TimingMarks()
    marks.take_prefill(prefill(first_token_unix_s=time.time() - 0.5))
    marks.take_decode(update(0.0, step_s=0.2), colocated=False)
    marks.take_decode(update(0.0, step_s=9.0), colocated=False)  # only the first counts
    timing = marks.timing(received_s=0.0)
    assert timing.decode_step_s == 0.2
    assert 0.3 <= timing.handover_s < 0.4  # 0.5 s since token #1, less the 0.2 s step


def test_a_colocated_request_has_no_handover():
    marks = TimingMarks()
    marks.take_decode(update(0.2, step_s=0.2), colocated=True)
    timing = marks.timing(received_s=0.0)
    assert (timing.first_token_unix_s, timing.decode_step_s, timing.handover_s) == (0, 0, 0)
