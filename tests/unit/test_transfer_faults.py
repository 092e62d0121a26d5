"""Fault injection into KV fetches (kv_transfer/faults.py): the spec, each kind through a real
TransportSet over the local and shm backends, and the verifier that compares the faults
injected with the failures the real code counted."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from decode_worker.config import DecodeWorkerConfig
from kv_transfer.checksum import Locator
from kv_transfer.factory import make_transport, make_worker_transports
from kv_transfer.faults import FaultInjector, FaultKind, FaultPlan, verify_faults
from kv_transfer.local import LocalExchange
from kv_transfer.pages import TransportBackend
from kv_transfer.transport import TransferError, TransferFailure
from kv_transfer.transport_set import TransportSet
from tests.unit.test_transport_contract import (
    DST_PAGES,
    SRC_PAGES,
    make_cache,
    make_handle,
    make_layout,
)

LAYOUT = make_layout()
TIMEOUT_S = 0.5
CHECKSUM, TIMEOUT, ERROR = TransferFailure.CHECKSUM, TransferFailure.TIMEOUT, TransferFailure.ERROR


class FailureCounter:
    """A TransferObserver counting failures by reason, as a worker's metrics do."""

    def __init__(self) -> None:
        self.failures: Counter[TransferFailure] = Counter()

    def observe_transfer(self, backend, direction, nbytes, seconds) -> None:
        pass

    def count_transfer_failure(self, backend, direction, reason) -> None:
        self.failures[reason] += 1


@dataclass
class Path:
    """A source set and an injecting sink set over one backend, with the sink's caches."""

    backend: TransportBackend
    source: TransportSet
    sink: TransportSet
    observer: FailureCounter
    src_cache: torch.Tensor
    dst_cache: torch.Tensor

    def fetch(self, transfer_id: str, timeout_s: float = TIMEOUT_S) -> None:
        locator = self.source.export(self.backend, transfer_id, self.src_cache, SRC_PAGES)
        handle = make_handle(transfer_id, LAYOUT, locator, self.backend)
        self.sink.fetch(handle, self.dst_cache, DST_PAGES, timeout_s)

    def arrived(self) -> bool:
        return torch.equal(self.dst_cache[list(DST_PAGES)], self.src_cache[list(SRC_PAGES)])

    @property
    def injected(self) -> dict[FaultKind, int]:
        return self.sink.faults_injected()


def make_path(
    backend: TransportBackend, plan: FaultPlan, verify: bool = True, sample_rate: float = 1.0
) -> Path:
    exchange = LocalExchange()
    options = {"exchange": exchange} if backend == TransportBackend.LOCAL else {}

    def transport():
        return make_transport(
            backend, verify_checksum=verify, checksum_sample_rate=sample_rate, **options
        )

    observer = FailureCounter()
    source = TransportSet({backend: transport()}, backend)
    sink = TransportSet(
        {backend: transport()}, backend, observer=observer, injector=FaultInjector(plan)
    )
    return Path(backend, source, sink, observer, make_cache(LAYOUT, 1), make_cache(LAYOUT, 2))


@pytest.fixture(params=[TransportBackend.LOCAL, TransportBackend.SHM])
def backend(request) -> TransportBackend:
    return request.param


@pytest.fixture
def paths() -> Iterator[list[Path]]:
    """Paths a test makes; closed after it, so no shm segment outlives it."""
    made: list[Path] = []
    yield made
    for path in made:
        path.sink.close()
        path.source.close()


def path_of(paths: list[Path], backend, plan: FaultPlan, **options) -> Path:
    paths.append(make_path(backend, plan, **options))
    return paths[-1]


def only(kind: FaultKind, **extra) -> FaultPlan:
    """A plan that gives every transfer this fault."""
    return FaultPlan(**{kind.value: 1.0}, **extra)


# The spec


def test_a_spec_sets_each_kind_and_the_seed():
    plan = FaultPlan.parse("fail=0.05, corrupt=0.01,stall=0.01,seed=7,delay=0.1,delay_s=0.2")
    assert plan == FaultPlan(fail=0.05, corrupt=0.01, stall=0.01, delay=0.1, delay_s=0.2, seed=7)


def test_the_empty_spec_injects_nothing():
    assert not FaultPlan.parse("").is_active
    assert DecodeWorkerConfig().fault_plan is None


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("fial=0.1", "transfer_faults.fial: unknown key"),
        ("fail=lots", "transfer_faults.fail: 'lots' is not a number"),
        ("corrupt=1.5", "transfer_faults.corrupt: not a probability"),
        ("stall", "transfer_faults.stall: give it once"),
        ("fail=0.1,fail=0.2", "transfer_faults.fail: give it once"),
        ("seed=1.5", "transfer_faults.seed: '1.5' is not a number"),
        ("delay_s=-1", "transfer_faults.delay_s: must be ≥ 0"),
        ("fail=0.6,stall=0.6", "transfer_faults: the probabilities sum to more than 1"),
    ],
)
def test_a_bad_spec_is_refused_naming_its_key(spec, named):
    with pytest.raises(ValueError, match=named):
        FaultPlan.parse(spec)


def test_a_worker_config_refuses_a_bad_spec_naming_the_key():
    with pytest.raises(ValueError, match="transfer_faults.corupt: unknown key"):
        DecodeWorkerConfig(transfer_faults="corupt=0.01")


def test_the_pick_is_a_function_of_seed_and_transfer_id_at_the_planned_rates():
    """A transfer always gets the same fault, so a run repeats; the rates hold over many."""
    plan = FaultPlan(fail=0.05, corrupt=0.01, stall=0.01, seed=7)
    picks = Counter(plan.pick(f"t-{i}") for i in range(20_000))
    assert [plan.pick(f"t-{i}") for i in range(50)] == [plan.pick(f"t-{i}") for i in range(50)]
    assert 900 <= picks[FaultKind.FAIL] <= 1100
    assert 150 <= picks[FaultKind.CORRUPT] <= 250
    assert 150 <= picks[FaultKind.STALL] <= 250
    assert set(picks) == {None, FaultKind.FAIL, FaultKind.CORRUPT, FaultKind.STALL}


# Each kind through a real TransportSet


def test_fail_raises_before_anything_is_copied(paths, backend):
    path = path_of(paths, backend, only(FaultKind.FAIL))
    before = path.dst_cache.clone()
    with pytest.raises(TransferError, match="injected fault: fail") as raised:
        path.fetch("t-1")
    assert raised.value.reason is ERROR
    assert torch.equal(path.dst_cache, before)
    assert path.injected == {FaultKind.FAIL: 1}
    assert path.observer.failures == {ERROR: 1}


def test_fail_after_complete_raises_although_the_bytes_arrived(paths, backend):
    path = path_of(paths, backend, only(FaultKind.FAIL_AFTER_COMPLETE))
    with pytest.raises(TransferError, match="after the copy completed"):
        path.fetch("t-1")
    assert path.arrived()
    assert path.injected == {FaultKind.FAIL_AFTER_COMPLETE: 1}
    assert path.observer.failures == {ERROR: 1}
    assert path.sink.num_fetches() == {}


def test_corrupt_is_caught_by_the_real_checksum_before_the_copy(paths, backend):
    path = path_of(paths, backend, only(FaultKind.CORRUPT))
    before = path.dst_cache.clone()
    with pytest.raises(TransferError, match="checksum mismatch") as raised:
        path.fetch("t-1")
    assert raised.value.reason is CHECKSUM
    assert torch.equal(path.dst_cache, before)
    assert path.injected == {FaultKind.CORRUPT: 1}
    assert path.observer.failures == {CHECKSUM: 1}


def test_corrupt_with_verification_off_lands_unseen_and_stays_unverified(paths, backend):
    """The verifier relies on verification being on: off, a corruption reaches the pages and
    no failure is counted, so it cannot be verified."""
    path = path_of(paths, backend, only(FaultKind.CORRUPT), verify=False)
    path.fetch("t-1")
    assert not path.arrived()
    assert path.injected == {FaultKind.CORRUPT: 1}
    assert path.observer.failures == {}
    assert not verify_faults(path.injected, path.observer.failures).all_verified


def test_corrupt_of_a_sampled_out_transfer_is_not_caught(paths, backend):
    """checksum_sample_rate trades coverage for cost: a transfer sampled out says so in its
    locator and is fetched unverified, so a corruption of it lands."""
    path = path_of(paths, backend, only(FaultKind.CORRUPT), sample_rate=0.0)
    locator = path.source.export(backend, "t-1", path.src_cache, SRC_PAGES)
    assert Locator.decode(locator).sampled_out
    path.sink.fetch(make_handle("t-1", LAYOUT, locator, backend), path.dst_cache, DST_PAGES, 1.0)
    assert not path.arrived()
    assert path.observer.failures == {}


def test_a_sample_rate_checksums_that_share_of_transfers(paths):
    path = path_of(paths, TransportBackend.LOCAL, FaultPlan(), sample_rate=0.25)
    locators = [
        path.source.export(TransportBackend.LOCAL, f"t-{i}", path.src_cache, SRC_PAGES)
        for i in range(400)
    ]
    num_sampled = sum(Locator.decode(locator).checksum is not None for locator in locators)
    assert 70 <= num_sampled <= 130


def test_delay_succeeds_later(paths, backend):
    path = path_of(paths, backend, only(FaultKind.DELAY, delay_s=0.2))
    started = time.monotonic()
    path.fetch("t-1")
    assert time.monotonic() - started >= 0.2
    assert path.arrived()
    assert path.injected == {FaultKind.DELAY: 1}
    assert path.observer.failures == {}


def test_a_delay_past_the_timeout_fails_on_the_transports_own_deadline(paths, backend):
    path = path_of(paths, backend, only(FaultKind.DELAY, delay_s=0.3))
    with pytest.raises(TransferError, match="deadline passed") as raised:
        path.fetch("t-1", timeout_s=0.2)
    assert raised.value.reason is TIMEOUT
    assert path.observer.failures == {TIMEOUT: 1}


def test_stall_fails_as_a_timeout_at_the_deadline_leaving_no_thread_blocked(paths, backend):
    path = path_of(paths, backend, only(FaultKind.STALL))
    threads_before = threading.active_count()
    started = time.monotonic()
    with pytest.raises(TransferError, match="stall") as raised:
        path.fetch("t-1")
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 0.25
    assert raised.value.reason is TIMEOUT
    assert threading.active_count() == threads_before
    assert path.injected == {FaultKind.STALL: 1}
    assert path.observer.failures == {TIMEOUT: 1}


# The verifier


def test_every_injected_fault_is_matched_by_the_failure_it_must_cause(paths, backend):
    plan = FaultPlan(fail=0.2, fail_after_complete=0.1, corrupt=0.2, stall=0.05, seed=3)
    path = path_of(paths, backend, plan)
    for i in range(60):
        try:
            path.fetch(f"t-{i}", timeout_s=0.05)
        except TransferError:
            pass
        path.source.release(backend, f"t-{i}")
    injected = path.injected
    assert set(injected) == {
        FaultKind.FAIL,
        FaultKind.FAIL_AFTER_COMPLETE,
        FaultKind.CORRUPT,
        FaultKind.STALL,
    }
    assert path.observer.failures == {
        ERROR: injected[FaultKind.FAIL] + injected[FaultKind.FAIL_AFTER_COMPLETE],
        CHECKSUM: injected[FaultKind.CORRUPT],
        TIMEOUT: injected[FaultKind.STALL],
    }
    verdict = verify_faults(injected, path.observer.failures)
    assert verdict.all_verified and verdict.unexplained == {}
    assert verdict.injected == sum(injected.values())


def test_a_failure_nobody_injected_is_reported_not_counted_as_verification():
    verdict = verify_faults({FaultKind.CORRUPT: 2}, {CHECKSUM: 2, ERROR: 1})
    assert (verdict.injected, verdict.verified, verdict.unexplained) == (2, 2, {ERROR: 1})
    missed = verify_faults({FaultKind.CORRUPT: 2, FaultKind.STALL: 1}, {CHECKSUM: 1, ERROR: 1})
    assert (missed.verified, missed.all_verified) == (1, False)


def test_a_worker_set_built_with_a_plan_injects_into_its_fetches():
    """The worker path: make_worker_transports wraps the set (shm) and its ledger counts."""
    observer = FailureCounter()
    sink = make_worker_transports(
        TransportBackend.SHM,
        None,
        verify_checksum=True,
        observer=observer,
        faults=only(FaultKind.CORRUPT),
    )
    source = make_worker_transports(TransportBackend.SHM, None, verify_checksum=True)
    try:
        path = Path(
            TransportBackend.SHM,
            source,
            sink,
            observer,
            make_cache(LAYOUT, 1),
            make_cache(LAYOUT, 2),
        )
        with pytest.raises(TransferError, match="checksum mismatch"):
            path.fetch("t-1")
    finally:
        sink.close()
        source.close()
    assert sink.faults_injected() == {FaultKind.CORRUPT: 1}
    assert observer.failures == {CHECKSUM: 1}
    assert source.faults_injected() == {}
