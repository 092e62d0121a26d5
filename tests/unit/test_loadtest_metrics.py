"""loadtest/metrics.py on hand-made records whose figures are computed by hand."""

from __future__ import annotations

import pytest

from loadtest.metrics import Slo, percentile, percentiles, summarize, tpot_s
from loadtest.runner import RequestRecord


def make_record(
    index: int,
    sent_s: float,
    chunk_times_s: list[float],
    end_s: float,
    *,
    code: str = "OK",
    reason: str = "",
    prompt_tokens: int = 10,
    cached_prompt_tokens: int = 0,
) -> RequestRecord:
    """One token per chunk; a failure without chunks has no first token."""
    return RequestRecord(
        index,
        prompt_len=prompt_tokens,
        max_tokens=len(chunk_times_s),
        sent_s=sent_s,
        first_token_s=chunk_times_s[0] if chunk_times_s else None,
        chunk_times_s=chunk_times_s,
        end_s=end_s,
        num_output_tokens=len(chunk_times_s),
        code=code,
        reason=reason,
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=cached_prompt_tokens,
    )


def test_percentiles_interpolate_between_closest_ranks_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    figures = percentiles(values)
    # sorted 1..5: rank (n-1)*q = 2 → 3; 3.6 → 4.6; 3.96 → 4.96
    assert (figures.count, figures.mean, figures.p50) == (5, 3.0, 3.0)
    assert figures.p90 == pytest.approx(4.6) and figures.p99 == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0
    assert percentiles([]).count == 0 and percentiles([]).p99 == 0.0


def test_tpot_spreads_the_time_after_the_first_token_over_the_rest():
    record = make_record(0, 1.0, [1.5, 1.6, 1.8], 2.1)  # ttft 0.5, e2e 1.1, 3 tokens
    assert tpot_s(record) == pytest.approx((1.1 - 0.5) / 2)
    assert tpot_s(make_record(1, 0.0, [0.2], 0.3)) is None  # one token: no TPOT


def test_summary_counts_latencies_rates_and_hits_of_ok_requests_only():
    records = [
        make_record(0, 0.0, [0.1, 0.2, 0.3], 0.4, prompt_tokens=10, cached_prompt_tokens=5),
        make_record(1, 1.0, [1.3, 1.5], 1.5, prompt_tokens=30, cached_prompt_tokens=5),
        make_record(2, 2.0, [], 2.1, code="RESOURCE_EXHAUSTED", reason="OVERLOADED"),
        make_record(3, 3.0, [], 3.5, code="DEADLINE_EXCEEDED"),
    ]
    summary = summarize(records, duration_s=4.0)
    assert (summary.num_requests, summary.num_ok, summary.num_failed) == (4, 2, 2)
    assert summary.by_status == {"OK": 2, "RESOURCE_EXHAUSTED": 1, "DEADLINE_EXCEEDED": 1}
    assert summary.by_reason == {"RESOURCE_EXHAUSTED/OVERLOADED": 1, "DEADLINE_EXCEEDED": 1}
    assert summary.request_rate == 0.5
    assert summary.input_tokens_per_s == 40 / 4 and summary.output_tokens_per_s == 5 / 4
    assert summary.ttft.mean == pytest.approx(0.2)  # 0.1 and 0.3
    assert summary.e2e.p50 == pytest.approx(0.45)  # 0.4 and 0.5
    assert summary.tpot.mean == pytest.approx((0.15 + 0.2) / 2)  # 0.3/2 and 0.2/1
    # gaps 0.1, 0.1 (request 0) and 0.2 (request 1)
    assert summary.itl.count == 3 and summary.itl.mean == pytest.approx(0.4 / 3)
    assert summary.prefix_hit_ratio == 10 / 40
    assert summary.goodput is None and summary.slo_attainment is None


def test_goodput_counts_ok_requests_that_meet_both_objectives():
    records = [
        make_record(0, 0.0, [0.1, 0.2], 0.2),  # ttft 0.1, tpot 0.1: meets both
        make_record(1, 0.0, [0.6, 0.7], 0.7),  # ttft 0.6: misses TTFT
        make_record(2, 0.0, [0.1, 0.5], 0.5),  # tpot 0.4: misses TPOT
        make_record(3, 0.0, [0.2], 0.2),  # one token, ttft 0.2: no TPOT to miss
        make_record(4, 0.0, [], 0.1, code="UNAVAILABLE"),  # failed: never good
    ]
    summary = summarize(records, duration_s=2.0, slo=Slo(ttft_s=0.5, tpot_s=0.2))
    assert summary.goodput == 2 / 2.0
    assert summary.slo_attainment == 2 / 5


def test_an_slo_parses_from_its_flag():
    assert Slo.parse("ttft=0.5,tpot=0.05") == Slo(0.5, 0.05)
    assert Slo.parse(" tpot = 0.1 , ttft=2 ") == Slo(2.0, 0.1)


@pytest.mark.parametrize(
    "text, named",
    [
        ("ttft=0.5,tpott=0.05", "'tpott'"),
        ("ttft=0.5", "missing tpot"),
        ("ttft=fast,tpot=0.05", "ttft='fast'"),
        ("ttft=0.5,tpot=-1", "tpot must be a positive"),
        ("ttft,tpot=0.05", "ttft needs a value"),
        ("ttft=0.5,tpot=inf", "tpot must be a positive"),
    ],
)
def test_a_bad_slo_is_refused_naming_the_key(text, named):
    with pytest.raises(ValueError, match=named):
        Slo.parse(text)
