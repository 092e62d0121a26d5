"""What a request's stream carries inside the router (server.py turns these into protobuf),
and the clock and timing marks of one request. All times are `time.monotonic()` seconds but
the `_unix_s` ones, which are wall clocks (time.time()) compared across processes.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

from router.errors import DeadlineExceeded
from router.worker_wire import DecodeUpdate, PrefillResult


class FinishReason(enum.Enum):
    LENGTH = "length"  # max_tokens (which validation fits into the context) reached
    STOP = "stop"  # EOS, a stop token or a stop string


@dataclass(frozen=True, slots=True)
class TokenChunk:
    token_ids: tuple[int, ...]
    text: str  # UTF-8 delta; held-back text comes in a later chunk


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Timing:
    queue_s: float
    prefill_s: float
    kv_transfer_s: float
    ttft_s: float
    e2e_s: float
    # Disaggregated only (0 otherwise): see generation.proto's Timing.
    first_token_unix_s: float = 0.0
    decode_step_s: float = 0.0
    handover_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Completion:
    finish_reason: FinishReason
    stop: str  # the stop string, or the stop token's text; "" for LENGTH
    usage: Usage
    timing: Timing
    prefill_worker_id: str  # the `both` worker's id on a colocated route
    decode_worker_id: str


StreamEvent = TokenChunk | Completion


@dataclass(frozen=True, slots=True)
class RequestClock:
    received_s: float
    deadline_s: float | None = None  # None: the client set no deadline

    @classmethod
    def start(cls, time_remaining_s: float | None) -> RequestClock:
        """A clock started now; `time_remaining_s` is the client's budget, if it set one."""
        now = time.monotonic()
        return cls(now, None if time_remaining_s is None else now + time_remaining_s)

    def remaining_s(self, cap_s: float) -> float:
        """The budget for the next wait: at most `cap_s`; raises DeadlineExceeded at zero."""
        if self.deadline_s is None:
            return cap_s
        left_s = self.deadline_s - time.monotonic()
        if left_s <= 0:
            raise DeadlineExceeded("the request's deadline passed")
        return min(cap_s, left_s)


@dataclass(slots=True)
class TimingMarks:
    """Filled in as the legs report; `timing` turns them into the Final message's Timing."""

    sent_s: float | None = None  # the first leg's call went out
    first_token_s: float | None = None  # token #1 was handed to the client stream
    worker_queue_s: float = 0.0
    prefill_s: float = 0.0
    kv_transfer_s: float = 0.0
    cached_tokens: int = 0
    decode_updates: int = 0
    first_token_unix_s: float = 0.0  # handed off: when the prefill worker sampled token #1
    decode_step_s: float = 0.0
    handover_s: float = 0.0

    def take_prefill(self, result: PrefillResult) -> None:
        self.worker_queue_s, self.prefill_s = result.queue_s, result.prefill_s
        self.cached_tokens = result.cached_prompt_tokens
        self.first_token_unix_s = result.first_token_unix_s

    def take_decode(self, update: DecodeUpdate, colocated: bool) -> None:
        """The first update carries the leg's figures: the KV transfer and, colocated, the
        worker's queue and prefill time up to token #1 (later chunks report time since)."""
        self.decode_updates += 1
        if self.decode_updates > 1:
            return
        self.kv_transfer_s = update.kv_transfer_s
        if not colocated and self.first_token_unix_s > 0:
            # Token #1 sampled → token #2 here, less the step that made token #2.
            self.decode_step_s = update.first_step_s
            self.handover_s = time.time() - self.first_token_unix_s - update.first_step_s
        if colocated:
            self.worker_queue_s = update.queue_s
            self.prefill_s = update.prefill_s
            self.cached_tokens = update.cached_prompt_tokens

    def timing(self, received_s: float) -> Timing:
        now = time.monotonic()
        sent_s = received_s if self.sent_s is None else self.sent_s
        first_token_s = now if self.first_token_s is None else self.first_token_s
        return Timing(
            queue_s=sent_s - received_s + self.worker_queue_s,
            prefill_s=self.prefill_s,
            kv_transfer_s=self.kv_transfer_s,
            ttft_s=first_token_s - received_s,
            e2e_s=now - received_s,
            first_token_unix_s=self.first_token_unix_s,
            decode_step_s=self.decode_step_s,
            handover_s=self.handover_s,
        )
