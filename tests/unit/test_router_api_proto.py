"""The public API edge: proto -> RawRequest (unset vs zero), and undecodable request bytes."""

from __future__ import annotations

import pytest

from pdserve.v1 import generation_pb2 as pb
from router.api_proto import (
    FAULT_SEARCH_MAX_BYTES,
    UndecodableRequest,
    decode_generate_request,
    raw_request_from_proto,
)
from router.tokenizer import ChatMessage
from router.validation import InputKind


def test_unset_sampling_fields_are_none_and_explicit_zeros_are_kept():
    message = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=0.0, top_k=0))
    sampling = raw_request_from_proto(message).sampling
    assert (sampling.temperature, sampling.top_k) == (0.0, 0)
    assert (sampling.top_p, sampling.max_tokens, sampling.seed) == (None, None, None)


def test_each_input_kind_is_carried_over():
    chat = pb.ChatInput(messages=[pb.ChatMessage(role="user", content="yo")])
    assert raw_request_from_proto(pb.GenerateRequest(chat=chat)).messages == (
        ChatMessage("user", "yo"),
    )
    tokens = raw_request_from_proto(pb.GenerateRequest(tokens=pb.TokenInput(token_ids=[4, 5])))
    assert (tokens.kind, tokens.token_ids) == (InputKind.TOKENS, (4, 5))
    assert raw_request_from_proto(pb.GenerateRequest()).kind is InputKind.NONE


def test_valid_bytes_decode_to_the_message():
    message = pb.GenerateRequest(request_id="r", prompt="hé")
    assert decode_generate_request(message.SerializeToString()) == message


BAD = b"\x02\xff\xfe"  # a length-2 string that is not UTF-8


@pytest.mark.parametrize(
    "data, field",
    [
        (b"\x0a" + BAD, "request_id"),  # field 1
        (b"\x12" + BAD, "model"),  # field 2
        (b"\x1a" + BAD, "prompt"),  # field 3
        (b"\x22\x06\x0a\x04\x0a" + BAD, "chat.messages[0].role"),
        (b"\x32\x04\x3a" + BAD, "sampling.stop"),  # sampling.stop[0]
        (b"\x1a\x09ab", "prompt"),  # field 3 cut short: 9 bytes announced, 2 sent
    ],
)
def test_undecodable_bytes_name_the_field_that_failed(data, field):
    valid_prefix = pb.GenerateRequest(request_id="ok").SerializeToString()
    assert decode_generate_request(valid_prefix + data) == UndecodableRequest(field)


def test_a_huge_broken_message_is_named_as_a_whole_without_a_long_search():
    tokens = pb.GenerateRequest(tokens=pb.TokenInput(token_ids=list(range(200_000))))
    data = tokens.SerializeToString() + b"\x1a" + BAD  # then a prompt that is not UTF-8
    assert len(data) > FAULT_SEARCH_MAX_BYTES
    # the search would name `prompt`; beyond the bound it is not run at all
    assert decode_generate_request(data) == UndecodableRequest("request")
