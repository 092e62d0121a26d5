"""The KV transport contract (test_transport_contract.py's suite) on CUDA kv caches, for the
backends a GPU worker keeps beside cuda_ipc because they stage through host memory: shm (its
peers on one node, on either device) and tcp. GPU only: skipped without CUDA.
"""

from __future__ import annotations

import pytest

from kv_transfer.pages import TransportBackend
from tests.unit.test_transport_contract import (
    FetchServer,
    SpawnedPair,
    TransportContract,
    needs_cuda,
)

pytestmark = [pytest.mark.gpu, needs_cuda]
SHM, TCP = TransportBackend.SHM, TransportBackend.TCP


# id: (backend, the exporting cache's device, the fetching cache's device)
CASES = {
    "shm-cuda-to-cuda": (SHM, "cuda", "cuda"),
    "shm-cpu-to-cuda": (SHM, "cpu", "cuda"),  # a CPU worker's export into a CUDA worker
    "shm-cuda-to-cpu": (SHM, "cuda", "cpu"),
    "tcp-cuda-to-cuda": (TCP, "cuda", "cuda"),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request: pytest.FixtureRequest):
    """The fetching side's server (one per case), the backend, the exporting device."""
    backend, src_device, dst_device = CASES[request.param]
    server = FetchServer(backend, dst_device)
    yield server, backend, src_device
    server.stop()


class TestCudaStagedTransports(TransportContract):
    @pytest.fixture
    def pair(self, case):
        server, backend, src_device = case
        pair = SpawnedPair(server, backend, src_device)
        yield pair
        pair.close()
