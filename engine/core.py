"""One engine: a model runner, its page pool and a scheduler, advanced one step at a time.

`step()` = schedule → build the flat batch → run the model → sample where a sequence is
complete → append tokens, apply stop conditions, finish. Not thread-safe: exactly one thread
(the worker's `EngineLoop`) calls it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from engine.batch import ForwardBatch
from engine.config import ModelConfig
from engine.page_pool import PagePool
from engine.request import Request, RequestStatus
from engine.sampler import make_generator, sample
from engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig

log = logging.getLogger(__name__)

# Seeded sampling derives one generator per output position, so a request's tokens do not
# depend on whether its first token was sampled on another worker (disaggregated) or here.
_SEED_STRIDE = 0x9E3779B97F4A7C15


class Runner(Protocol):
    config: ModelConfig

    def execute(self, batch: ForwardBatch) -> torch.Tensor: ...


@dataclass(slots=True)
class RequestOutput:
    request: Request
    new_token_ids: list[int]
    # FINISHED_HANDOFF only: page references that now belong to the caller.
    handoff_page_ids: list[int]
    step_s: float = 0.0  # the step that made it: schedule, forward and sampling

    @property
    def finished(self) -> bool:
        return self.request.status.is_finished


@dataclass(frozen=True, slots=True)
class EngineStats:
    num_pages_total: int
    num_pages_in_use: int  # referenced by a request or a lease
    num_pages_cached: int  # idle but holding a reusable prefix
    num_waiting: int
    num_running: int
    num_queued_prefill_tokens: int  # prompt tokens admitted but not computed yet
    num_steps: int
    integrity_ok: bool


class EngineCore:
    def __init__(self, runner: Runner, pool: PagePool, config: SchedulerConfig) -> None:
        self.runner = runner
        self.pool = pool
        self.scheduler = Scheduler(config, pool)
        self.eos_token_ids = frozenset(runner.config.eos_token_ids)
        self.max_context_len = runner.config.max_position_embeddings
        self.num_steps = 0

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add_request(self, req: Request) -> None:
        self.scheduler.add(req)

    def add_running(self, req: Request) -> None:
        """Adopts a request whose KV already sits in `req.page_ids` (see Scheduler)."""
        self.scheduler.add_running(req)

    def abort(self, request_id: str) -> Request | None:
        """Finishes the request as aborted and frees its pages; None if unknown here."""
        req = self.scheduler.find(request_id)
        if req is not None:
            self.scheduler.finish(req, RequestStatus.FINISHED_ABORTED)
        return req

    def abort_all(self) -> list[RequestOutput]:
        """Aborts every request (after a failed step); returns their final outputs."""
        reqs = [*self.scheduler.running, *self.scheduler.waiting]
        for req in reqs:
            self.scheduler.finish(req, RequestStatus.FINISHED_ABORTED)
        return [RequestOutput(req, [], []) for req in reqs]

    def step(self) -> list[RequestOutput]:
        started = time.monotonic()
        plan = self.scheduler.schedule()
        if plan.is_empty:
            return []
        logits = self.runner.execute(self._build_batch(plan.seqs))
        self.num_steps += 1
        for seq in plan.seqs:
            self.scheduler.on_computed(seq)
        outputs = self._sample_and_update(plan.seqs, logits)
        step_s = time.monotonic() - started
        for output in outputs:
            output.step_s = step_s
        return outputs

    def _build_batch(self, seqs: list[ScheduledSeq]) -> ForwardBatch:
        page_size = self.pool.page_size
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts = [0]
        seq_lens: list[int] = []
        tables: list[list[int]] = []
        for seq in seqs:
            req, start = seq.request, seq.request.num_computed_tokens
            end = start + seq.num_new_tokens
            token_ids += req.token_slice(start, end)
            positions += range(start, end)
            slots += [
                req.page_ids[p // page_size] * page_size + p % page_size for p in range(start, end)
            ]
            starts.append(len(token_ids))
            seq_lens.append(end)
            tables.append(req.page_ids[: -(-end // page_size)])
        return ForwardBatch(
            token_ids=torch.tensor(token_ids, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            query_start_loc=starts,
            seq_lens=seq_lens,
            block_tables=tables,
        )

    def _sample_and_update(
        self, seqs: list[ScheduledSeq], logits: torch.Tensor
    ) -> list[RequestOutput]:
        rows = [
            i
            for i, seq in enumerate(seqs)
            if seq.request.num_computed_tokens == seq.request.num_tokens
        ]
        if not rows:
            return []
        reqs = [seqs[i].request for i in rows]
        generators = [self._generator(req) for req in reqs]
        tokens = sample(logits[rows], [req.sampling for req in reqs], generators)
        return [self._append(req, token) for req, token in zip(reqs, tokens, strict=True)]

    def _generator(self, req: Request) -> torch.Generator | None:
        seed = req.sampling.seed
        if seed is None:
            return None
        return make_generator((seed + _SEED_STRIDE * (req.num_output_tokens + 1)) % 2**63)

    def _append(self, req: Request, token: int) -> RequestOutput:
        req.output_token_ids.append(token)
        status = self._finish_status(req, token)
        handoff: list[int] = []
        if status is not None:
            handoff = self.scheduler.finish(req, status)
        return RequestOutput(req, [token], handoff)

    def _finish_status(self, req: Request, token: int) -> RequestStatus | None:
        sampling = req.sampling
        if token in sampling.stop_token_ids or (
            not sampling.ignore_eos and token in self.eos_token_ids
        ):
            req.stop_token_id = token
            return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= sampling.max_tokens or req.num_tokens >= self.max_context_len:
            return RequestStatus.FINISHED_LENGTH
        if req.handoff_after_prefill:
            return RequestStatus.FINISHED_HANDOFF
        return None

    def check_integrity(self) -> None:
        self.scheduler.check_integrity()

    def stats(self) -> EngineStats:
        try:
            self.check_integrity()
            integrity_ok = True
        except AssertionError:
            log.exception("engine integrity check failed")
            integrity_ok = False
        pool = self.pool.stats()
        return EngineStats(
            num_pages_total=pool.num_total,
            num_pages_in_use=pool.num_in_use,
            num_pages_cached=pool.num_cached_idle,
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            num_queued_prefill_tokens=self.scheduler.num_uncomputed_prompt_tokens(),
            num_steps=self.num_steps,
            integrity_ok=integrity_ok,
        )
