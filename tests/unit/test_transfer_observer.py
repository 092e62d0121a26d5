"""TransportSet's observer (kv_transfer/factory.py): every export and fetch reported once, with
its bytes and seconds, or as a failure when it raised TransferError."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kv_transfer.factory import make_worker_transports
from kv_transfer.local import LocalExchange, LocalTransport
from kv_transfer.pages import Role, TransferDirection, TransportBackend
from kv_transfer.transport import TransferError, TransferFailure
from kv_transfer.transport_set import TransportSet, UnavailableBackend
from pdserve.v1 import worker_pb2
from pdserve.worker_metrics import WorkerMetrics
from tests.unit.test_transport_contract import (
    DST_PAGES,
    SRC_PAGES,
    make_cache,
    make_handle,
    make_layout,
)

LOCAL = TransportBackend.LOCAL
EXPORT, FETCH = TransferDirection.EXPORT, TransferDirection.FETCH


@dataclass
class RecordingObserver:
    transfers: list[tuple[TransportBackend, TransferDirection, int]] = field(default_factory=list)
    failures: list[tuple[TransportBackend, TransferDirection, TransferFailure]] = field(
        default_factory=list
    )

    def observe_transfer(self, backend, direction, nbytes, seconds) -> None:
        assert seconds >= 0
        self.transfers.append((backend, direction, nbytes))

    def count_transfer_failure(self, backend, direction, reason) -> None:
        self.failures.append((backend, direction, reason))


class FullTransport(LocalTransport):
    """A source with no room left to stage an export."""

    def export(self, transfer_id, kv_cache, page_ids) -> bytes:
        raise TransferError(f"{transfer_id}: no staging memory left")


def make_local_pair(observer) -> tuple[TransportSet, TransportSet]:
    """A source and a sink set sharing one in-process exchange, both observed."""
    exchange = LocalExchange()
    source = TransportSet({LOCAL: LocalTransport(exchange=exchange)}, LOCAL, observer=observer)
    sink = TransportSet({LOCAL: LocalTransport(exchange=exchange)}, LOCAL, observer=observer)
    return source, sink


def test_an_export_and_its_fetch_report_the_pages_bytes():
    observer = RecordingObserver()
    source, sink = make_local_pair(observer)
    layout = make_layout()
    locator = source.export(LOCAL, "t-1", make_cache(layout, 1), SRC_PAGES)
    sink.fetch(make_handle("t-1", layout, locator, LOCAL), make_cache(layout, 2), DST_PAGES, 5.0)
    nbytes = len(SRC_PAGES) * layout.page_nbytes
    assert observer.transfers == [(LOCAL, EXPORT, nbytes), (LOCAL, FETCH, nbytes)]
    assert observer.failures == []


def test_a_failed_fetch_is_reported_as_a_failure_and_still_raises():
    observer = RecordingObserver()
    source, sink = make_local_pair(observer)
    layout = make_layout()
    locator = source.export(LOCAL, "t-1", make_cache(layout, 1), SRC_PAGES)
    source.release(LOCAL, "t-1")
    handle = make_handle("t-1", layout, locator, LOCAL)
    with pytest.raises(TransferError, match="released"):
        sink.fetch(handle, make_cache(layout, 2), DST_PAGES, 5.0)
    assert observer.failures == [(LOCAL, FETCH, TransferFailure.ERROR)]
    assert observer.transfers == [(LOCAL, EXPORT, len(SRC_PAGES) * layout.page_nbytes)]
    assert sink.num_fetches() == {}


def test_a_failed_export_is_reported_as_a_failure_and_still_raises():
    observer = RecordingObserver()
    source = TransportSet({LOCAL: FullTransport()}, LOCAL, observer=observer)
    with pytest.raises(TransferError, match="no staging memory"):
        source.export(LOCAL, "t-1", make_cache(make_layout(), 1), SRC_PAGES)
    assert observer.failures == [(LOCAL, EXPORT, TransferFailure.ERROR)]
    assert observer.transfers == []
    assert source.num_exports() == {}


def test_a_backend_not_held_is_no_transfer_failure():
    observer = RecordingObserver()
    source, _ = make_local_pair(observer)
    with pytest.raises(UnavailableBackend):
        source.export(TransportBackend.SHM, "t-1", make_cache(make_layout(), 1), SRC_PAGES)
    assert observer.failures == []


def test_a_worker_set_reports_to_the_observer_it_was_built_with():
    observer = RecordingObserver()
    transports = make_worker_transports(
        TransportBackend.SHM, None, verify_checksum=True, observer=observer
    )
    layout = make_layout()
    try:
        transports.export(TransportBackend.SHM, "t-1", make_cache(layout, 1), SRC_PAGES)
    finally:
        transports.close()
    assert observer.transfers == [
        (TransportBackend.SHM, EXPORT, len(SRC_PAGES) * layout.page_nbytes)
    ]


def test_worker_metrics_count_what_the_set_moved():
    metrics = WorkerMetrics("prefill-0", Role.PREFILL, stats=worker_pb2.WorkerStats)
    source, _ = make_local_pair(metrics)
    layout = make_layout()
    source.export(LOCAL, "t-1", make_cache(layout, 1), SRC_PAGES)
    body, _ = metrics.render()
    nbytes = float(len(SRC_PAGES) * layout.page_nbytes)
    assert f'pdserve_kv_transfer_bytes_total{{backend="local",direction="export"}} {nbytes}' in (
        body.decode()
    )
