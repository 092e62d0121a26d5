"""Checksum sampling fails closed: only the fetching worker's own sample decides what it may
take unverified, never a flag from the peer."""

from __future__ import annotations

import numpy as np
import pytest

from kv_transfer.checksum import Integrity, Locator
from kv_transfer.transport import TransferError, TransferFailure

BUFFER = np.arange(64, dtype=np.uint8)


def test_a_peer_saying_sampled_out_is_refused_for_a_transfer_this_worker_samples():
    locator = Locator(BUFFER.nbytes, None, b"addr", sampled_out=True)
    with pytest.raises(TransferError) as refused:
        Integrity(verify=True, sample_rate=1.0).received(locator, BUFFER, "t1")
    assert refused.value.reason is TransferFailure.CHECKSUM


def test_a_transfer_outside_both_samples_goes_unverified():
    integrity = Integrity(verify=True, sample_rate=0.0)
    locator = integrity.seal("t1", BUFFER, BUFFER.nbytes, b"addr")
    assert locator.sampled_out
    assert integrity.received(locator, BUFFER, "t1") is BUFFER
