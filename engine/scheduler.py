"""Token-budget scheduler shared by every role: prefill and decode are one catch-up loop.

A request passes through, in order:
  1. waiting  — holds no pages: new, or preempted (pages freed, recomputed later). On
                admission it first reuses cached prefix pages (`PagePool.match_prefix`);
                if the rest does not fit, it gives them back and waits at the head.
  2. running  — holds pages covering its computed tokens; each step schedules the tokens it
                still lacks (1 for a decoding request, a chunk of its prompt otherwise).
  3. finished — removed by `finish()`: its pages are freed, or, for a prefill hand-off,
                their references move to the caller (who pins them under a lease).
A request whose KV arrived by transfer enters at 2 through `add_running()`.

Each step serves running requests first, oldest first, within `max_num_batched_tokens`. When
a running request needs a page and none is free, the newest running request is preempted
(vLLM's recompute preemption); then waiting requests are admitted while budget, sequence
slots and pages last. The scheduler never blocks and never fails a request for lack of pages.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from engine.page_pool import PagePool
from engine.request import Request, RequestStatus
from kv_transfer.pages import chain_hash, page_hashes


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64  # running requests per step
    max_num_batched_tokens: int = 512  # token budget per step; longer prompts are chunked
    enable_prefix_caching: bool = True


@dataclass(slots=True)
class ScheduledSeq:
    request: Request
    num_new_tokens: int

    @property
    def completes_sequence(self) -> bool:
        """True when this step computes every known token, so the next one can be sampled."""
        req = self.request
        return req.num_computed_tokens + self.num_new_tokens == req.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    seqs: list[ScheduledSeq]
    preempted: list[Request]

    @property
    def is_empty(self) -> bool:
        return not self.seqs


class Scheduler:
    """Sole owner of the waiting queue and the running list of one engine."""

    def __init__(self, config: SchedulerConfig, pool: PagePool) -> None:
        self.config = config
        self.pool = pool
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def num_uncomputed_prompt_tokens(self) -> int:
        """Prompt tokens of queued and running requests not computed yet (prefill backlog)."""
        return sum(
            max(0, len(req.prompt_token_ids) - req.num_computed_tokens)
            for req in (*self.waiting, *self.running)
        )

    def add(self, req: Request) -> None:
        """Queues a new request (no pages, nothing computed)."""
        req.status = RequestStatus.WAITING
        self.waiting.append(req)

    def add_running(self, req: Request) -> None:
        """Adopts a request whose pages already hold its computed KV (a transfer landed).

        The scheduler takes over the references in `req.page_ids`.
        """
        req.status = RequestStatus.RUNNING
        self._cache_full_pages(req)
        self.running.append(req)

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        out = SchedulerOutput(seqs=[], preempted=[])
        budget = self._schedule_running(budget, out)
        if not out.preempted:
            self._schedule_waiting(budget, out)
        return out

    def _schedule_running(self, budget: int, out: SchedulerOutput) -> int:
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._reserve_or_preempt(req, num_new, out):
                break  # req itself was preempted: nothing newer is left to run
            out.seqs.append(ScheduledSeq(req, num_new))
            budget -= num_new
            i += 1
        return budget

    def _reserve_or_preempt(self, req: Request, num_new: int, out: SchedulerOutput) -> bool:
        """Frees pages by preempting the newest running requests until `req` fits.

        Victims come from the end of `running`, so none was scheduled earlier this step.
        """
        while not self._reserve_pages(req, num_new):
            victim = self.running[-1]
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is req:
                return False
        return True

    def _schedule_waiting(self, budget: int, out: SchedulerOutput) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            self._match_prefix(req)
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            if not self._reserve_pages(req, num_new):
                self._unmatch(req)  # waiting requests hold no pages: running ones need them
                break
            self.waiting.popleft()
            if req.first_scheduled_s is None:
                req.first_scheduled_s = time.monotonic()
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            out.seqs.append(ScheduledSeq(req, num_new))
            budget -= num_new

    def _reserve_pages(self, req: Request, num_new_tokens: int) -> bool:
        """Allocates the pages `req` needs for `num_new_tokens` more tokens, if it can."""
        needed = self.pool_pages_for(req.num_computed_tokens + num_new_tokens) - len(req.page_ids)
        if needed <= 0:
            return True
        if not self.pool.can_allocate(needed):
            return False
        req.page_ids.extend(self.pool.allocate(needed))
        return True

    def pool_pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.pool.page_size)

    def _match_prefix(self, req: Request) -> None:
        """Reuses cached full pages of the sequence, leaving at least one token to compute."""
        page_size = self.pool.page_size
        if len(req.page_hashes) < req.num_tokens // page_size:
            req.page_hashes = page_hashes(req.all_token_ids, page_size)
        if not self.config.enable_prefix_caching:
            return
        max_pages = (req.num_tokens - 1) // page_size
        req.page_ids = self.pool.match_prefix(req.page_hashes[:max_pages])
        req.num_published_pages = len(req.page_ids)
        req.num_computed_tokens = len(req.page_ids) * page_size
        if req.num_preemptions == 0:
            req.num_cached_tokens = min(req.num_computed_tokens, len(req.prompt_token_ids))

    def _unmatch(self, req: Request) -> None:
        self.pool.free(reversed(req.page_ids))
        req.page_ids = []
        req.num_published_pages = 0
        req.num_computed_tokens = 0
        req.num_cached_tokens = 0

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.pool.free(reversed(req.page_ids))  # tail first: the prefix head stays cached longest
        req.page_ids = []
        req.num_published_pages = 0
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)

    def on_computed(self, seq: ScheduledSeq) -> None:
        """Records a step's tokens as computed and publishes newly full pages to the cache."""
        seq.request.num_computed_tokens += seq.num_new_tokens
        self._cache_full_pages(seq.request)

    def _cache_full_pages(self, req: Request) -> None:
        if not self.config.enable_prefix_caching:
            return
        page_size = self.pool.page_size
        for index in range(req.num_published_pages, req.num_computed_tokens // page_size):
            if index == len(req.page_hashes):
                prev = req.page_hashes[-1] if req.page_hashes else b""
                tokens = req.token_slice(index * page_size, (index + 1) * page_size)
                req.page_hashes.append(chain_hash(prev, tokens))
            self.pool.cache_page(req.page_ids[index], req.page_hashes[index])
            req.num_published_pages = index + 1

    def finish(self, req: Request, status: RequestStatus) -> list[int]:
        """Removes a request; frees its pages unless it hands them off.

        Returns the page ids whose references now belong to the caller (hand-off only).
        """
        req.status = status
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        pages, req.page_ids = req.page_ids, []
        if status is RequestStatus.FINISHED_HANDOFF:
            return pages
        self.pool.free(reversed(pages))  # tail first: the prefix head stays cached longest
        return []

    def find(self, request_id: str) -> Request | None:
        for req in (*self.running, *self.waiting):
            if req.request_id == request_id:
                return req
        return None

    def check_integrity(self) -> None:
        """Every running request holds exactly the pages its computed tokens need."""
        for req in self.running:
            assert len(req.page_ids) >= self.pool_pages_for(req.num_computed_tokens), req
        for req in self.waiting:
            assert not req.page_ids and req.num_computed_tokens == 0, req
        self.pool.check_integrity()
