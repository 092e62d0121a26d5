"""A request inside one engine, and its sampling parameters.

Prefill and decode are one catch-up loop (vLLM's model): a request needs
`num_tokens - num_computed_tokens` more tokens computed before it can sample the next one.
A decode worker receives a request whose prompt KV arrived by transfer, so it starts with
`num_computed_tokens == len(prompt_token_ids)` and token #1 already in `output_token_ids`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # admitted, no pages yet (or preempted and waiting to recompute)
    WAITING_FOR_KV = "waiting_for_kv"  # decode side: pages allocated, transfer in flight
    RUNNING = "running"  # has pages, scheduled every step
    FINISHED_STOPPED = "finished_stopped"  # EOS or a stop token
    FINISHED_LENGTH = "finished_length"  # max_tokens or the context limit
    FINISHED_HANDOFF = "finished_handoff"  # prefill side: token #1 sampled, pages handed over
    FINISHED_ABORTED = "finished_aborted"

    @property
    def is_finished(self) -> bool:
        return self.name.startswith("FINISHED")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Validated by the router; the engine trusts these values."""

    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = disabled
    seed: int | None = None
    max_tokens: int = 16
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    # A prefill-only request ends after token #1 and hands its pages to the caller.
    handoff_after_prefill: bool = False
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache
    page_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    stop_token_id: int | None = None
    arrival_s: float = field(default_factory=time.monotonic)
    first_scheduled_s: float | None = None
    num_preemptions: int = 0
    # Chain hashes of the full pages computed so far (see kv_transfer.pages.page_hashes).
    page_hashes: list[bytes] = field(default_factory=list)
    num_published_pages: int = 0  # leading full pages registered in the prefix cache

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output without copying the whole sequence."""
        num_prompt = len(self.prompt_token_ids)
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : end - num_prompt]
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - num_prompt]

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)
