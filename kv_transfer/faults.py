"""Fault injection into KV fetches, for chaos testing only (off unless a worker's config sets
`transfer_faults`), so chaos scenarios run real worker processes over real transports.

One fetch through an injecting worker, in order:
  1. pick       the transfer id's hash (with the plan's seed) picks at most one fault kind,
                each with its probability; the same transfer always gets the same pick
  2. inject     fail                 raise before anything is copied
                fail_after_complete  run the real fetch (the bytes arrive), then raise
                corrupt              flip bytes of what arrived, inside the transport, before
                                     its checksum verification (Integrity.tap), so the real
                                     verification must catch it
                delay                sleep `delay_s`, then the real fetch with what is left
                                     of its timeout
                stall                block for the whole timeout, then fail as a timeout: the
                                     transfer still ends as a unit, at its deadline
  3. count      the FaultLedger counts each fault once it really happened (a corrupt one only
                when bytes were flipped), by kind

Each consequence is counted apart, by the real code: the worker's TransportSet counts every
TransferError by its reason (checksum, timeout, error). `verify_faults` compares the two.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import xxhash

from kv_transfer.checksum import Buffer
from kv_transfer.pages import KVHandle
from kv_transfer.transport import KVTransport, TransferError, TransferFailure


class FaultKind(enum.StrEnum):
    FAIL = "fail"
    FAIL_AFTER_COMPLETE = "fail_after_complete"
    CORRUPT = "corrupt"
    DELAY = "delay"
    STALL = "stall"


# The failure each kind must cause, as the TransportSet counts it; a delay causes none.
EXPECTED_FAILURE: Mapping[FaultKind, TransferFailure] = {
    FaultKind.FAIL: TransferFailure.ERROR,
    FaultKind.FAIL_AFTER_COMPLETE: TransferFailure.ERROR,
    FaultKind.CORRUPT: TransferFailure.CHECKSUM,
    FaultKind.STALL: TransferFailure.TIMEOUT,
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The probability of each fault kind per fetch (summing to ≤ 1), the delay's length, and
    the seed that, with a transfer id, decides its fault."""

    fail: float = 0.0
    fail_after_complete: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    stall: float = 0.0
    delay_s: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for kind in FaultKind:
            if not 0.0 <= getattr(self, kind.value) <= 1.0:
                raise ValueError(f"transfer_faults.{kind}: not a probability in [0, 1]")
        if sum(self.probabilities.values()) > 1.0:
            raise ValueError("transfer_faults: the probabilities sum to more than 1")
        if self.delay_s < 0:
            raise ValueError("transfer_faults.delay_s: must be ≥ 0")

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        """A plan from "kind=p,…,delay_s=s,seed=n", e.g. "fail=0.05,corrupt=0.01,seed=7";
        "" is the plan without faults. ValueError names the bad key."""
        values: dict[str, float | int] = {}
        known = [f.name for f in fields(cls)]
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, raw = (s.strip() for s in item.partition("="))
            if key not in known:
                raise ValueError(f"transfer_faults.{key}: unknown key (known: {', '.join(known)})")
            if not sep or key in values:
                raise ValueError(f"transfer_faults.{key}: give it once, as {key}=value")
            try:
                values[key] = int(raw) if key == "seed" else float(raw)
            except ValueError:
                raise ValueError(f"transfer_faults.{key}: {raw!r} is not a number") from None
        return cls(**values)

    @property
    def probabilities(self) -> dict[FaultKind, float]:
        return {kind: getattr(self, kind.value) for kind in FaultKind}

    @property
    def is_active(self) -> bool:
        return any(self.probabilities.values())

    def pick(self, transfer_id: str) -> FaultKind | None:
        """The fault of this transfer, if any; pure: the same id always gets the same."""
        draw = xxhash.xxh3_64_intdigest(f"{self.seed}/{transfer_id}".encode()) / 2**64
        for kind, probability in self.probabilities.items():
            if draw < probability:
                return kind
            draw -= probability
        return None


class FaultLedger:
    """Faults injected, by kind; the one owner of those counts. Thread-safe."""

    def __init__(self) -> None:
        self._counts: Counter[FaultKind] = Counter()
        self._lock = threading.Lock()

    def count(self, kind: FaultKind) -> None:
        with self._lock:
            self._counts[kind] += 1

    def counts(self) -> dict[FaultKind, int]:
        with self._lock:
            return dict(self._counts)


class FaultInjector:
    """Injects its plan's faults into the fetches of one worker's transports. Thread-safe:
    fetches run on many RPC threads at once.

    `attach(transport)` before use, so its Integrity passes received bytes through `tap`;
    a transport without an Integrity (cuda_ipc) gets every kind but corrupt.
    """

    def __init__(self, plan: FaultPlan, ledger: FaultLedger | None = None) -> None:
        self.plan = plan
        self.ledger = ledger if ledger is not None else FaultLedger()
        self._to_corrupt: set[str] = set()
        self._lock = threading.Lock()

    def attach(self, transport: KVTransport) -> None:
        integrity = getattr(transport, "integrity", None)
        if integrity is not None:
            integrity.tap = self.tap

    def fetch(
        self,
        transport: KVTransport,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        """transport.fetch, with this transfer's fault (if any) injected."""
        tid = handle.transfer_id
        kind = self.plan.pick(tid)
        if kind is FaultKind.FAIL:
            self.ledger.count(kind)
            raise TransferError(f"{tid}: injected fault: fail")
        if kind is FaultKind.STALL:
            time.sleep(timeout_s)
            self.ledger.count(kind)
            raise TransferError(f"{tid}: injected stall past the deadline", TransferFailure.TIMEOUT)
        if kind is FaultKind.DELAY:
            time.sleep(self.plan.delay_s)
            self.ledger.count(kind)
            timeout_s -= self.plan.delay_s
        if kind is FaultKind.CORRUPT:
            self._corrupt_fetch(transport, handle, kv_cache, dst_page_ids, timeout_s)
            return
        transport.fetch(handle, kv_cache, dst_page_ids, timeout_s)
        if kind is FaultKind.FAIL_AFTER_COMPLETE:
            self.ledger.count(kind)
            raise TransferError(f"{tid}: injected failure after the copy completed")

    def tap(self, transfer_id: str, buffer: Buffer) -> Buffer:
        """Integrity.tap: a corrupted copy of the received buffer for a transfer marked by
        its fetch, counted; anything else passes untouched."""
        with self._lock:
            if transfer_id not in self._to_corrupt:
                return buffer
            self._to_corrupt.discard(transfer_id)
        self.ledger.count(FaultKind.CORRUPT)
        return flip_bytes(buffer)

    def _corrupt_fetch(
        self,
        transport: KVTransport,
        handle: KVHandle,
        kv_cache: torch.Tensor,
        dst_page_ids: Sequence[int],
        timeout_s: float,
    ) -> None:
        with self._lock:
            self._to_corrupt.add(handle.transfer_id)
        try:
            transport.fetch(handle, kv_cache, dst_page_ids, timeout_s)
        finally:
            with self._lock:  # unmarked also when the fetch failed before the tap
                self._to_corrupt.discard(handle.transfer_id)


def flip_bytes(buffer: Buffer) -> Buffer:
    """A copy of the received rows with the middle byte of every row inverted."""
    # buffer: uint8 rows [num_pages, page_nbytes], a numpy view of a segment or a tensor
    copy = buffer.copy() if isinstance(buffer, np.ndarray) else buffer.clone()
    copy[:, copy.shape[1] // 2] ^= 0xFF
    return copy


@dataclass(frozen=True, slots=True)
class FaultVerdict:
    """Injected faults against the failures the real code counted, per failure reason."""

    injected: int  # faults whose consequence is a failure (delays excluded)
    verified: int  # of those, matched by a counted failure of the expected reason
    unexplained: dict[TransferFailure, int]  # failures counted beyond those injected

    @property
    def all_verified(self) -> bool:
        return self.verified == self.injected


def verify_faults(
    injected: Mapping[FaultKind, int], failures: Mapping[TransferFailure, int]
) -> FaultVerdict:
    """Checks that every injected fault caused the failure its kind must cause (a corruption:
    a checksum failure, a stall: a timeout, a fail: an error), by counts per reason. Failures
    beyond the injected ones (real errors) are reported, not counted as verification."""
    expected: Counter[TransferFailure] = Counter()
    for kind, reason in EXPECTED_FAILURE.items():
        expected[reason] += injected.get(kind, 0)
    verified = sum(min(n, failures.get(reason, 0)) for reason, n in expected.items())
    unexplained = {
        reason: failures.get(reason, 0) - expected[reason]
        for reason in TransferFailure
        if failures.get(reason, 0) > expected[reason]
    }
    return FaultVerdict(sum(expected.values()), verified, unexplained)
