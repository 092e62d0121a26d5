"""Malformed Generate calls that only raw bytes can carry (see bad_requests.py): invalid
UTF-8 in a string field, fields cut short, garbage, and messages beyond the gRPC cap.

The message classes refuse to encode invalid UTF-8, so these are built by appending a
hand-encoded field to a valid message's bytes; protobuf's last-one-wins merge makes the
appended field the one that counts.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from pdserve.v1 import generation_pb2 as pb
from tests.chaos.bad_requests import (
    GRPC_MAX_MESSAGE_BYTES,
    BadRequest,
    bad,
    texts,
    valid_chat,
    valid_request,
    valid_sampling,
)

LEN = 2  # the length-delimited wire type
INVALID_UTF8 = (b"\xff", b"\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80")
TOP_LEVEL_STRINGS = {"request_id": 1, "model": 2, "prompt": 3}
TOP_LEVEL_FIELDS = {**TOP_LEVEL_STRINGS, "chat": 4, "tokens": 5, "sampling": 6}
SAMPLING_FIELDS = {f.name: f.number for f in pb.SamplingParams.DESCRIPTOR.fields}


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


def length_delimited(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | LEN) + varint(len(payload)) + payload


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def parses(data: bytes) -> bool:
    try:
        pb.GenerateRequest.FromString(data)
    except DecodeError:
        return False
    return True


@st.composite
def invalid_utf8(draw) -> bytes:
    text = draw(texts).encode()
    at = draw(st.integers(0, len(text)))
    data = text[:at] + draw(st.sampled_from(INVALID_UTF8)) + text[at:]
    assert not is_utf8(data)  # a stray byte always remains, wherever it was put
    return data


def without(request: pb.GenerateRequest, field: str) -> bytes:
    request.ClearField("input" if field in ("prompt", "chat", "tokens") else field)
    return request.SerializeToString()


@st.composite
def utf8_in_top_level_string(draw) -> BadRequest:
    field = draw(st.sampled_from(sorted(TOP_LEVEL_STRINGS)))
    base = without(draw(valid_request()), field)
    payload = base + length_delimited(TOP_LEVEL_STRINGS[field], draw(invalid_utf8()))
    return bad(f"invalid UTF-8 in {field}", payload, field)


@st.composite
def utf8_in_chat(draw) -> BadRequest:
    chat = draw(valid_chat())
    index = draw(st.integers(0, len(chat.messages) - 1))
    part = draw(st.sampled_from(["role", "content"]))
    encoded = [m.SerializeToString() for m in chat.messages]
    message = chat.messages[index]
    strings = {"role": message.role.encode(), "content": message.content.encode()}
    strings[part] = draw(invalid_utf8())
    encoded[index] = length_delimited(1, strings["role"]) + length_delimited(2, strings["content"])
    chat_bytes = b"".join(length_delimited(1, m) for m in encoded)
    payload = without(draw(valid_request()), "chat") + length_delimited(4, chat_bytes)
    return bad(f"invalid UTF-8 in a chat {part}", payload, f"chat.messages[{index}].{part}")


@st.composite
def utf8_in_stop(draw) -> BadRequest:
    sampling = draw(valid_sampling()).SerializeToString()
    sampling += length_delimited(SAMPLING_FIELDS["stop"], draw(invalid_utf8()))
    payload = without(draw(valid_request()), "sampling") + length_delimited(6, sampling)
    return bad("invalid UTF-8 in a stop string", payload, "sampling.stop")


@st.composite
def cut_top_level_field(draw) -> BadRequest:
    """A last field whose declared length runs past the end of the message."""
    field = draw(st.sampled_from(sorted(TOP_LEVEL_FIELDS)))
    declared = draw(st.integers(1, 300))
    sent = draw(st.binary(max_size=declared - 1))
    cut = varint(TOP_LEVEL_FIELDS[field] << 3 | LEN) + varint(declared) + sent
    return bad(f"{field} cut short", draw(valid_request()).SerializeToString() + cut, field)


@st.composite
def cut_sampling_field(draw) -> BadRequest:
    """Inside a complete `sampling`, one more field that stops before its own end."""
    sampling = draw(valid_sampling())
    field = draw(st.sampled_from(sorted(SAMPLING_FIELDS)))
    last = pb.SamplingParams()
    if field in ("stop", "stop_token_ids"):
        getattr(last, field).append(1 if field == "stop_token_ids" else draw(texts))
    else:
        setattr(last, field, draw(SAMPLING_VALUES.get(field, st.integers(1, 2**31 - 1))))
    encoded = last.SerializeToString()
    sampling_bytes = (
        sampling.SerializeToString() + encoded[: draw(st.integers(1, len(encoded) - 1))]
    )
    payload = without(draw(valid_request()), "sampling") + length_delimited(6, sampling_bytes)
    return bad(f"sampling.{field} cut short", payload, f"sampling.{field}")


SAMPLING_VALUES = {
    "temperature": st.floats(0, 2, width=32),
    "top_p": st.floats(0, 1, exclude_min=True, width=32),
    "seed": st.integers(0, 2**64 - 1),
    "ignore_eos": st.just(True),
}


@st.composite
def cut_tag(draw) -> BadRequest:
    """Bytes that end inside a field's tag (an unfinished varint)."""
    payload = draw(valid_request()).SerializeToString() + draw(
        st.sampled_from([b"\x80", b"\xff\xff"])
    )
    return bad("message ends inside a tag", payload, "request")


garbage = st.binary(min_size=1, max_size=256).filter(lambda data: not parses(data))


@st.composite
def garbage_bytes(draw) -> BadRequest:
    return bad("garbage bytes", draw(garbage))  # any real field may be named


@st.composite
def oversized_message(draw) -> BadRequest:
    request = draw(valid_request())
    request.prompt = "x" * draw(st.integers(GRPC_MAX_MESSAGE_BYTES + 1, 2 * GRPC_MAX_MESSAGE_BYTES))
    return BadRequest(
        "message beyond the gRPC cap", request.SerializeToString(), frozenset(), oversized=True
    )
