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


@pytest.fixture(scope="module")
def shm_into_cuda():
    server = FetchServer(SHM, "cuda")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shm_into_cpu():
    server = FetchServer(SHM, "cpu")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tcp_into_cuda():
    server = FetchServer(TCP, "cuda")
    yield server
    server.stop()


class TestShmCudaToCuda(TransportContract):
    @pytest.fixture
    def pair(self, shm_into_cuda):
        pair = SpawnedPair(shm_into_cuda, SHM, "cuda")
        yield pair
        pair.close()


class TestShmCpuToCuda(TransportContract):
    """A CPU worker's export fetched into a CUDA worker's cache."""

    @pytest.fixture
    def pair(self, shm_into_cuda):
        pair = SpawnedPair(shm_into_cuda, SHM, "cpu")
        yield pair
        pair.close()


class TestShmCudaToCpu(TransportContract):
    """A CUDA worker's export fetched into a CPU worker's cache."""

    @pytest.fixture
    def pair(self, shm_into_cpu):
        pair = SpawnedPair(shm_into_cpu, SHM, "cuda")
        yield pair
        pair.close()


class TestTcpCudaToCuda(TransportContract):
    @pytest.fixture
    def pair(self, tcp_into_cuda):
        pair = SpawnedPair(tcp_into_cuda, TCP, "cuda")
        yield pair
        pair.close()
