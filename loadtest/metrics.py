"""The figures of a load run: pure functions over `RequestRecord`s.

Definitions (as vLLM's benchmark_serving and DistServe use them):
  TTFT     first token's arrival − send
  TPOT     (e2e − TTFT) / (output tokens − 1), per request with at least two tokens
  ITL      the gaps between successive token-bearing chunks, pooled over requests
  e2e      end − send
  goodput  requests/s that finished OK AND met both SLOs (TTFT ≤ slo.ttft_s, TPOT ≤ slo.tpot_s;
           a one-token request has no TPOT and meets that half)
Latencies and token rates count OK requests only; rates divide by the run's duration.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.runner import RequestRecord

SLO_KEYS = ("ttft", "tpot")


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float
    tpot_s: float

    @classmethod
    def parse(cls, text: str) -> Slo:
        """ "ttft=0.5,tpot=0.05" (seconds); ValueError naming the key at fault."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, raw = item.partition("=")
            key = key.strip()
            if key not in SLO_KEYS:
                raise ValueError(f"--slo: unknown key {key!r} (expected {', '.join(SLO_KEYS)})")
            if not sep:
                raise ValueError(f"--slo: {key} needs a value in seconds, e.g. {key}=0.5")
            values[key] = _positive_seconds(key, raw)
        missing = [key for key in SLO_KEYS if key not in values]
        if missing:
            raise ValueError(f"--slo: missing {', '.join(missing)}")
        return cls(values["ttft"], values["tpot"])

    def is_met_by(self, record: RequestRecord) -> bool:
        tpot = tpot_s(record)
        ttft = ttft_s(record)
        return ttft is not None and ttft <= self.ttft_s and (tpot is None or tpot <= self.tpot_s)


def _positive_seconds(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"--slo: {key}={raw!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"--slo: {key} must be a positive number of seconds, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Seconds; all 0.0 (with count 0) when there was nothing to measure."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class Summary:
    num_requests: int
    num_ok: int
    num_failed: int
    by_status: dict[str, int]  # "OK": n, "RESOURCE_EXHAUSTED": n, …
    by_reason: dict[str, int]  # failures as "CODE/REASON" ("CODE" without a reason)
    duration_s: float
    request_rate: float  # OK requests/s achieved
    input_tokens_per_s: float
    output_tokens_per_s: float
    ttft: Percentiles
    tpot: Percentiles
    itl: Percentiles
    e2e: Percentiles
    prefix_hit_ratio: float  # cached prompt tokens / prompt tokens, OK requests
    slo: Slo | None
    goodput: float | None  # requests/s meeting the SLO; None without one
    slo_attainment: float | None  # fraction of all requests sent that met it


def ttft_s(record: RequestRecord) -> float | None:
    return None if record.first_token_s is None else record.first_token_s - record.sent_s


def e2e_s(record: RequestRecord) -> float:
    return record.end_s - record.sent_s


def tpot_s(record: RequestRecord) -> float | None:
    ttft = ttft_s(record)
    if ttft is None or record.num_output_tokens < 2:
        return None
    return (e2e_s(record) - ttft) / (record.num_output_tokens - 1)


def itls_s(record: RequestRecord) -> list[float]:
    times = record.chunk_times_s
    return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not sorted_values:
        return 0.0
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def percentiles(values: Sequence[float]) -> Percentiles:
    ordered = sorted(values)
    if not ordered:
        return Percentiles(0, 0.0, 0.0, 0.0, 0.0)
    mean = sum(ordered) / len(ordered)
    p50, p90, p99 = (percentile(ordered, q) for q in (50, 90, 99))
    return Percentiles(len(ordered), mean, p50, p90, p99)


def _rate(count: float, duration_s: float) -> float:
    return count / duration_s if duration_s > 0 else 0.0


def _failure_key(record: RequestRecord) -> str:
    return f"{record.code}/{record.reason}" if record.reason else record.code


def summarize(
    records: Sequence[RequestRecord], duration_s: float, slo: Slo | None = None
) -> Summary:
    ok = [r for r in records if r.ok]
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    num_good = sum(slo.is_met_by(r) for r in ok) if slo else 0
    return Summary(
        num_requests=len(records),
        num_ok=len(ok),
        num_failed=len(records) - len(ok),
        by_status=dict(Counter(r.code for r in records)),
        by_reason=dict(Counter(_failure_key(r) for r in records if not r.ok)),
        duration_s=duration_s,
        request_rate=_rate(len(ok), duration_s),
        input_tokens_per_s=_rate(prompt_tokens, duration_s),
        output_tokens_per_s=_rate(sum(r.num_output_tokens for r in ok), duration_s),
        ttft=percentiles([t for r in ok if (t := ttft_s(r)) is not None]),
        tpot=percentiles([t for r in ok if (t := tpot_s(r)) is not None]),
        itl=percentiles([gap for r in ok for gap in itls_s(r)]),
        e2e=percentiles([e2e_s(r) for r in ok]),
        prefix_hit_ratio=sum(r.cached_prompt_tokens for r in ok) / prompt_tokens
        if prompt_tokens
        else 0.0,
        slo=slo,
        goodput=_rate(num_good, duration_s) if slo else None,
        slo_attainment=(num_good / len(records) if records else 0.0) if slo else None,
    )
