"""B2's arithmetic: a handover is token #1 sampled → token #2 received, less the decode step
and the raw copy; and the raw copy it subtracts. The benchmark itself (a real SmolLM2
cluster) runs with `python -m bench --only B2`."""

from __future__ import annotations

import time

import pytest

from bench import b2_handover as b2
from pdserve.v1 import generation_pb2 as pb


class Stub:
    """Generate: token #1, then token #2 and the final message, as a router streams them."""

    def __init__(self, first_token_unix_s: float, decode_step_s: float) -> None:
        self.timing = pb.Timing(
            first_token_unix_s=first_token_unix_s,
            decode_step_s=decode_step_s,
            kv_transfer_s=0.001,
            handover_s=0.004,
        )

    def Generate(self, request, timeout):
        yield pb.GenerateResponse(chunk=pb.Chunk(token_ids=[5]))
        yield pb.GenerateResponse(chunk=pb.Chunk(token_ids=[6]))
        yield pb.GenerateResponse(final=pb.Final(timing=self.timing))


def test_overhead_is_the_time_to_the_client_less_the_decode_step_and_the_raw_copy():
    handover = b2.one_request(Stub(time.time() - 0.050, 0.040), [1] * 128, raw_s=0.002)
    assert handover.to_client_s == pytest.approx(0.050, abs=0.005)
    assert handover.overhead_s == pytest.approx(handover.to_client_s - 0.040 - 0.002)
    assert (handover.kv_transfer_s, handover.server_handover_s) == (0.001, 0.004)


def test_a_request_that_was_not_handed_off_is_an_error_not_a_zero():
    with pytest.raises(RuntimeError, match="not handed off"):
        b2.one_request(Stub(0.0, 0.0), [1] * 16, raw_s=0.0)


def test_the_raw_copy_takes_time_and_leaves_no_segment_behind():
    assert b2.raw_copy_s(1 << 20, repeats=3) > 0
    assert not list(b2.SHM_DIR.glob("pdserve-bench-b2-*"))
