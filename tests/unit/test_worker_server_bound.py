"""A worker's gRPC server refuses calls beyond its thread count at once (RESOURCE_EXHAUSTED)
rather than queueing them without bound."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from pdserve.workers import start_grpc_server

METHOD = "/test.Blocker/Block"


def test_a_call_beyond_the_threads_is_refused_not_queued():
    release, entered = threading.Event(), threading.Event()

    def block(request: bytes, context) -> bytes:
        entered.set()
        release.wait(10)
        return b"done"

    def register(server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(block)
        generic = grpc.method_handlers_generic_handler("test.Blocker", {"Block": handler})
        server.add_generic_rpc_handlers((generic,))

    server, port = start_grpc_server(register, "127.0.0.1", 0, max_workers=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, ThreadPoolExecutor(1) as pool:
            call = channel.unary_unary(METHOD)
            first = pool.submit(call, b"", timeout=10)
            assert entered.wait(5)
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=5)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            assert first.result() == b"done"
    finally:
        release.set()
        server.stop(0)
