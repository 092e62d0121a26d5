"""One attempt at one request: its legs, its output and its timing, from a route to its end.

`orchestrator.py` routes each attempt and decides on retries; a `RequestFlow` runs the legs
of its route (prefill, token #1, decode — or one colocated leg), relays the tokens, emits the
Completion, advances the request's lifecycle (lifecycle.py), and keeps in `legs` what the
wind-down must undo (`Legs.wind_down`).

Recompute (`kv_failure_policy` recompute): when the decode leg of a handed-off request fails
before its first decode token — the KV was unusable (KV_TRANSFER_FAILED, KV_LEASE_EXPIRED),
the decode worker was full, or it failed — the lease is released and a decode worker (the same
one when only the KV was at fault, else another) prefills prompt + token #1 itself and streams
the rest. Once, per request; greedy output is unchanged, seeded sampling continues from a
fresh generator.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING

from router.config import KVFailurePolicy
from router.errors import (
    ErrorReason,
    KVTransferFailed,
    Overloaded,
    RouterError,
    WorkerFailed,
    WorkerLost,
    WorkerUnavailable,
)
from router.events import (
    Completion,
    FinishReason,
    RequestClock,
    StreamEvent,
    TimingMarks,
    TokenChunk,
    Usage,
)
from router.legs import Legs
from router.lifecycle import Phase, RequestLifecycle
from router.output import OutputDelta, OutputStream
from router.policy import RouteDecision, Toward
from router.registry import WorkerRecord
from router.validation import ValidatedRequest
from router.worker_wire import DecodeUpdate, HandOff, PrefillResult

if TYPE_CHECKING:
    from router.orchestrator import Orchestrator

log = logging.getLogger(__name__)

Emit = Callable[[StreamEvent], Awaitable[None]]


class RequestFlow:
    """One request's progress: legs, output text, timing. Lives for one `run`."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        request: ValidatedRequest,
        clock: RequestClock,
        emit: Emit,
        decision: RouteDecision,
        lifecycle: RequestLifecycle,
    ) -> None:
        self._orchestrator = orchestrator
        self._lifecycle = lifecycle
        self._settings = orchestrator.settings
        self._clients = orchestrator.clients
        self._request = request
        self._clock = clock
        self._emit = emit
        self._decision = decision
        self._output = OutputStream(orchestrator.tokenizer, request.sampling.stop_strings)
        self._marks = TimingMarks()
        self.legs = Legs(request.request_id)
        self.on_decode_moved: Callable[[str], None] = lambda worker_id: None

    async def execute(self) -> None:
        self._lifecycle.enter(Phase.PREFILLING)
        if self._decision.is_colocated:
            await self._decode_leg(self._request, None)
            return
        prefill = await self._prefill_leg()
        stop_token_id = self._prefill_stop_token(prefill)
        delta = await self._emit_tokens((prefill.first_token_id,), prefill.finished, stop_token_id)
        if delta.stop_string is not None or prefill.finished:
            await self._complete(delta, stop_token_id)
            return
        decode = await self._orchestrator.decode_worker_now(self._decision)
        if decode.worker_id != self._decision.decode.worker_id:
            self._move_decode(decode)
        self._lifecycle.enter(Phase.TRANSFERRING)
        try:
            await self._decode_leg(self._request, self.legs.handoff)
        except (KVTransferFailed, WorkerLost, Overloaded) as error:
            if not self._may_recompute():
                raise self._after_token_1(error) from None
            await self._recompute(error, prefill.first_token_id)

    def _may_recompute(self) -> bool:
        """No decode token came (still TRANSFERRING) and the policy says recompute."""
        policy = self._settings.kv_failure_policy
        return policy is KVFailurePolicy.RECOMPUTE and self._lifecycle.phase is Phase.TRANSFERRING

    async def _recompute(self, error: RouterError, first_token_id: int) -> None:
        failed = self._decision.decode.worker_id
        target = await self._orchestrator.recompute_target(failed, _toward(error))
        if target is None:
            raise self._after_token_1(error) from None
        log.info(
            "request %s: %s on %s; recomputing on %s",
            self._request.request_id,
            error.reason,
            failed,
            target.worker_id,
        )
        self._orchestrator.metrics.count_recompute(error.reason)
        self._lifecycle.enter(Phase.RECOMPUTING)
        await self._give_up_lease()
        if target.worker_id != failed:
            self._move_decode(target)
        sampling = self._request.sampling
        again = dataclasses.replace(
            self._request,
            prompt_token_ids=(*self._request.prompt_token_ids, first_token_id),
            sampling=dataclasses.replace(sampling, max_tokens=sampling.max_tokens - 1),
        )
        await self._decode_leg(again, None)

    async def _give_up_lease(self) -> None:
        """Releases the handed-off KV's lease on the prefill worker (best effort: its TTL
        backs this), so a recomputed request holds nothing there."""
        handoff, self.legs.handoff = self.legs.handoff, None
        if handoff is None:
            return
        timeout_s = self._settings.control_timeout_s
        try:
            await self._clients.release_lease(
                handoff.src_address, handoff.handle.transfer_id, timeout_s
            )
        except RouterError as failure:
            log.info("request %s: lease release failed: %s", self._request.request_id, failure)

    def _after_token_1(self, error: RouterError) -> RouterError:
        """What the client is told of a decode leg that failed after it saw token #1: never
        "retry later" (it would repeat the tokens it has) — a full worker is a lost one."""
        failed = self._decision.decode.worker_id
        if isinstance(error, Overloaded):
            return WorkerLost("the decode worker had no room for the request").on(failed)
        return error.on(failed) if isinstance(error, WorkerFailed) else error

    def _move_decode(self, decode: WorkerRecord) -> None:
        self._decision = dataclasses.replace(self._decision, decode=decode)
        self.on_decode_moved(decode.worker_id)

    async def _prefill_leg(self) -> PrefillResult:
        prefill_worker, kv_backend = self._decision.prefill, self._decision.kv_backend
        # disaggregated routes always name both
        assert prefill_worker is not None and kv_backend is not None
        timeout_s = self._clock.remaining_s(self._settings.prefill_timeout_s)
        self._marks.sent_s = time.monotonic()
        self.legs.prefill_address = prefill_worker.address
        uncached = self._request.prompt_len - self._decision.expected_hit_pages * (
            prefill_worker.layout.page_size
        )
        with self._orchestrator.inflight.prefilling(prefill_worker.worker_id, max(uncached, 0)):
            try:
                result = await self._clients.prefill(
                    prefill_worker.address, self._request, kv_backend, timeout_s
                )
            except WorkerFailed as error:
                raise error.on(prefill_worker.worker_id) from None
        if result.handle is not None:
            self.legs.handoff = HandOff(
                result.first_token_id, result.handle, prefill_worker.address
            )
        self._marks.take_prefill(result)
        return result

    async def _decode_leg(self, request: ValidatedRequest, handoff: HandOff | None) -> None:
        """Streams the decode leg of `request` (the client's, or a recompute's) to its end."""
        decode = self._decision.decode
        timeout_s = self._clock.remaining_s(self._settings.decode_timeout_s)
        if self._marks.sent_s is None:
            self._marks.sent_s = time.monotonic()
        self.legs.decode_address = decode.address
        updates = self._clients.decode(decode.address, request, timeout_s, handoff)
        try:
            async with aclosing(updates):
                async for update in updates:
                    if await self._on_update(update):
                        return
        except WorkerUnavailable as error:
            raise self._lost_if_streaming(error.message).on(decode.worker_id) from None
        except KVTransferFailed as error:
            raise error.on(decode.worker_id) from None
        message = "the decode worker ended the stream without finishing"
        raise self._lost_if_streaming(message).on(decode.worker_id)

    async def _on_update(self, update: DecodeUpdate) -> bool:
        """Relays one decode update; returns True once the request completed."""
        if update.token_ids:
            self._lifecycle.enter(Phase.DECODING)
        self.legs.decode_acked = True
        self._marks.take_decode(update, colocated=self._decision.is_colocated)
        delta = await self._emit_tokens(update.token_ids, update.finished, update.stop_token_id)
        if delta.stop_string is None and not update.finished:
            return False
        self.legs.decode_finished = update.finished
        await self._complete(delta, update.stop_token_id)
        return True

    async def _emit_tokens(
        self, token_ids: tuple[int, ...], is_last: bool, stop_token_id: int | None = None
    ) -> OutputDelta:
        delta = self._output.push(token_ids, is_last, stop_token_id)
        if not (delta.token_ids or delta.text):  # e.g. a closing update without tokens
            return delta
        await self._emit(TokenChunk(delta.token_ids, delta.text))
        if self._marks.first_token_s is None:
            self._marks.first_token_s = time.monotonic()
        return delta

    async def _complete(self, delta: OutputDelta, stop_token_id: int | None) -> None:
        if delta.stop_string is not None:
            reason, stop = FinishReason.STOP, delta.stop_string
        elif stop_token_id is not None:
            reason, stop = FinishReason.STOP, self._orchestrator.stop_token_text(stop_token_id)
        else:
            reason, stop = FinishReason.LENGTH, ""
        prefill = self._decision.prefill or self._decision.decode
        usage = Usage(self._request.prompt_len, self._output.num_tokens, self._marks.cached_tokens)
        completion = Completion(
            finish_reason=reason,
            stop=stop,
            usage=usage,
            timing=self._marks.timing(self._clock.received_s),
            prefill_worker_id=prefill.worker_id,
            decode_worker_id=self._decision.decode.worker_id,
        )
        await self._emit(completion)
        self.legs.completed = True
        self._orchestrator.metrics.observe_completion(usage, completion.timing)

    def _prefill_stop_token(self, prefill: PrefillResult) -> int | None:
        """The stop token that made token #1 the last one, if that is why it was."""
        token_id, sampling = prefill.first_token_id, self._request.sampling
        is_eos = not sampling.ignore_eos and token_id in self._settings.eos_token_ids
        is_stop = prefill.finished and (is_eos or token_id in sampling.stop_token_ids)
        return token_id if is_stop else None

    @property
    def decision(self) -> RouteDecision:
        return self._decision

    def worker_failed_before_first_token(self) -> str | None:
        """The worker whose leg failed, if the client has seen no token yet (None otherwise):
        the decode worker once its leg started (colocated), else the prefill worker."""
        if self._output.num_tokens or self._marks.first_token_s is not None:
            return None
        if self.legs.decode_address:
            return self._decision.decode.worker_id
        prefill = self._decision.prefill
        return prefill.worker_id if prefill is not None else self._decision.decode.worker_id

    def _lost_if_streaming(self, message: str) -> WorkerUnavailable | WorkerLost:
        if self._output.num_tokens == 0:
            return WorkerUnavailable(message)
        return WorkerLost(f"{message} after {self._output.num_tokens} tokens")


def _toward(error: RouterError) -> Toward:
    """Where a recompute goes after `error`: back to the decode worker when only the pull
    failed (it is fine), anywhere when the lease ran out (it may have waited for pages, or
    been paused), elsewhere when the worker failed or was full."""
    if error.reason is ErrorReason.KV_TRANSFER_FAILED:
        return Toward.SAME
    if error.reason is ErrorReason.KV_LEASE_EXPIRED:
        return Toward.ANY
    return Toward.OTHER
