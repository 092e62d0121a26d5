"""B4's workload and the figures it is judged by; pure functions, no processes, no gRPC.

The workload (BENCHMARKS.md, B4): `num_groups` groups of `prompts_per_group` prompts; every
prompt of a group is the group's shared prefix followed by a suffix of its own. Prompts of
all groups are interleaved in one seeded random order and arrive open-loop at seeded
exponential gaps (Poisson).

The oracle hit rate is an upper bound for any router: with cold caches the first prompt of
each group must compute its prefix; every later prompt can at best reuse the prefix's full
pages, since suffixes are unique. A static partition (group g on worker g mod n) reaches it
whenever each worker can keep its share of prefixes cached (`fits_static_partition`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import percentile


@dataclass(frozen=True, slots=True)
class Prompt:
    group: int
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    num_groups: int = 16
    prompts_per_group: int = 16
    prefix_len: int = 1024
    suffix_len: tuple[int, int] = (32, 64)  # inclusive range, uniform
    token_range: tuple[int, int] = (1000, 49000)  # ordinary tokens of SmolLM2's vocabulary
    seed: int = 0

    def draw(self) -> Workload:
        rng = random.Random(self.seed)
        prefixes = [self._tokens(rng, self.prefix_len) for _ in range(self.num_groups)]
        prompts = [
            Prompt(group, prefixes[group] + self._tokens(rng, rng.randint(*self.suffix_len)))
            for group in range(self.num_groups)
            for _ in range(self.prompts_per_group)
        ]
        rng.shuffle(prompts)
        return Workload(self, tuple(prompts))

    def _tokens(self, rng: random.Random, count: int) -> tuple[int, ...]:
        return tuple(rng.randrange(*self.token_range) for _ in range(count))


@dataclass(frozen=True, slots=True)
class Workload:
    spec: WorkloadSpec
    prompts: tuple[Prompt, ...]  # in arrival order

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    @property
    def prefix_tokens(self) -> int:
        """Cache demand: every group's prefix, once."""
        return self.spec.num_groups * self.spec.prefix_len

    def oracle_hit_rate(self, page_size: int) -> float:
        """Token-weighted hit rate when only each group's first prompt misses (see module)."""
        seen: set[int] = set()
        hits = 0
        for prompt in self.prompts:
            if prompt.group in seen:
                matchable = (len(prompt.token_ids) - 1) // page_size * page_size
                hits += min(self.spec.prefix_len // page_size * page_size, matchable)
            seen.add(prompt.group)
        return hits / self.num_prompt_tokens

    def fits_static_partition(self, num_workers: int, cache_tokens: int) -> bool:
        """Whether each worker can cache its groups' prefixes plus one whole prompt."""
        groups_per_worker = -(-self.spec.num_groups // num_workers)
        longest = max(len(p.token_ids) for p in self.prompts)
        return groups_per_worker * self.spec.prefix_len + longest <= cache_tokens


def poisson_offsets_s(rate_per_s: float, count: int, seed: int = 1) -> list[float]:
    """Arrival times after the start, increasing: seeded exponential gaps at `rate_per_s`."""
    rng = random.Random(seed)
    return list(itertools.accumulate(rng.expovariate(rate_per_s) for _ in range(count)))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as the client saw it; times in seconds from the run's start."""

    group: int
    prompt_tokens: int
    cached_tokens: int  # Usage.cached_prompt_tokens of its Final (0 if it failed)
    sent_s: float
    first_s: float | None  # its first response; None if nothing came
    done_s: float
    prefill_worker_id: str
    is_ok: bool


@dataclass(frozen=True, slots=True)
class RunFigures:
    num_ok: int
    num_errors: int
    hit_rate: float  # Σ cached ÷ Σ prompt tokens, completed requests
    throughput_per_s: float  # completed ÷ (last completion − first send)
    ttft_p50_s: float
    ttft_p90_s: float
    num_prefill_workers_per_group: float  # mean distinct prefill workers a group went to

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> RunFigures:
        ok = [o for o in outcomes if o.is_ok and o.first_s is not None]
        span_s = max(o.done_s for o in ok) - min(o.sent_s for o in outcomes)
        ttfts = [o.first_s - o.sent_s for o in ok]
        spread: dict[int, set[str]] = {}
        for o in ok:
            spread.setdefault(o.group, set()).add(o.prefill_worker_id)
        return cls(
            num_ok=len(ok),
            num_errors=len(outcomes) - len(ok),
            hit_rate=sum(o.cached_tokens for o in ok) / sum(o.prompt_tokens for o in ok),
            throughput_per_s=len(ok) / span_s,
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p90_s=percentile(ttfts, 90),
            num_prefill_workers_per_group=sum(map(len, spread.values())) / len(spread),
        )
