"""Router validation: every malformed field is rejected by name before any worker is called."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from router.api_proto import UndecodableRequest, decode_generate_request
from router.errors import InvalidArgument
from router.tokenizer import ChatMessage, Tokenizer
from router.validation import (
    InputKind,
    RawRequest,
    RawSampling,
    RequestValidator,
    ValidationLimits,
)

LIMITS = ValidationLimits(
    served_model="smollm2",
    max_context_len=64,
    vocab_size=49152,
    max_tokens_default=16,
    max_tokens_limit=32,
    max_prompt_bytes=1000,
    max_stop_strings=2,
    max_stop_len=8,
    max_stop_token_ids=2,
)


@pytest.fixture(scope="module")
def validator(smollm2_dir: Path) -> RequestValidator:
    return RequestValidator(LIMITS, Tokenizer.from_dir(smollm2_dir))


def make_request(**fields) -> RawRequest:
    """A valid prompt request; `fields` replace request fields, `sampling_*` sampling ones."""
    sampling = {
        k.removeprefix("sampling_"): v for k, v in fields.items() if k.startswith("sampling_")
    }
    request = {k: v for k, v in fields.items() if not k.startswith("sampling_")}
    base = RawRequest(kind=InputKind.PROMPT, prompt="Hello world")
    return dataclasses.replace(base, sampling=RawSampling(**sampling), **request)


def rejected_field(validator: RequestValidator, request: RawRequest) -> str:
    with pytest.raises(InvalidArgument) as caught:
        validator.validate(request, "req-1")
    return caught.value.field


def test_valid_prompt_is_tokenized_and_defaults_fill_sampling(validator):
    validated = validator.validate(make_request(), "req-1")
    assert validated.request_id == "req-1"
    assert validated.prompt_token_ids == (19556, 905)  # "Hello world" in SmolLM2
    assert (validated.sampling.temperature, validated.sampling.top_p) == (0.0, 1.0)
    assert (validated.sampling.top_k, validated.sampling.seed) == (0, None)
    assert validated.sampling.max_tokens == 16


def test_default_max_tokens_is_clipped_to_the_room_left_in_the_context(validator):
    # 60 prompt tokens leave 4 of the 64-token context.
    validated = validator.validate(make_request(kind=InputKind.TOKENS, token_ids=(7,) * 60), "r")
    assert validated.sampling.max_tokens == 4


def test_chat_is_rendered_with_the_template(validator):
    messages = (ChatMessage("user", "Hi"),)
    validated = validator.validate(make_request(kind=InputKind.CHAT, messages=messages), "r")
    assert validated.prompt_token_ids[:1] == (1,)  # <|im_start|>, from the template
    assert validated.prompt_token_ids[-4:] == (1, 520, 9531, 198)  # <|im_start|>assistant\n


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"kind": InputKind.NONE, "prompt": ""}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "é" * 501}, "prompt"),  # 1002 bytes
        ({"prompt": "bad \udc80 surrogate"}, "prompt"),
        ({"prompt": "word " * 64}, "prompt"),  # 64 tokens: no room left to generate
        ({"kind": InputKind.CHAT, "messages": ()}, "chat.messages"),
        (
            {"kind": InputKind.CHAT, "messages": (ChatMessage("robot", "hi"),)},
            "chat.messages[0].role",
        ),
        ({"kind": InputKind.CHAT, "messages": (ChatMessage("user", "é" * 501),)}, "chat.messages"),
        ({"kind": InputKind.TOKENS, "token_ids": ()}, "tokens.token_ids"),
        ({"kind": InputKind.TOKENS, "token_ids": (1, 49152)}, "tokens.token_ids"),
        ({"kind": InputKind.TOKENS, "token_ids": (-1, 5)}, "tokens.token_ids"),
        ({"kind": InputKind.TOKENS, "token_ids": (5,) * 64}, "tokens.token_ids"),
        ({"model": "llama-70b"}, "model"),
        ({"request_id": "x" * 129}, "request_id"),
        ({"request_id": "has space"}, "request_id"),
        ({"request_id": "ünïcode"}, "request_id"),
    ],
)
def test_malformed_input_names_its_field(validator, fields, field):
    assert rejected_field(validator, make_request(**fields)) == field


@pytest.mark.parametrize(
    "sampling, field",
    [
        ({"temperature": float("nan")}, "sampling.temperature"),
        ({"temperature": float("inf")}, "sampling.temperature"),
        ({"temperature": -0.5}, "sampling.temperature"),
        ({"top_p": float("nan")}, "sampling.top_p"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"top_k": -1}, "sampling.top_k"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"max_tokens": -3}, "sampling.max_tokens"),
        ({"max_tokens": 33}, "sampling.max_tokens"),
        ({"stop": ("a", "b", "c")}, "sampling.stop"),
        ({"stop": ("",)}, "sampling.stop"),
        ({"stop": ("123456789",)}, "sampling.stop"),
        ({"stop": ("\ud800",)}, "sampling.stop"),
        ({"stop_token_ids": (49152,)}, "sampling.stop_token_ids"),
        ({"stop_token_ids": (-1,)}, "sampling.stop_token_ids"),
        ({"stop_token_ids": (1, 2, 3)}, "sampling.stop_token_ids"),
    ],
)
def test_malformed_sampling_names_its_field(validator, sampling, field):
    fields = {f"sampling_{name}": value for name, value in sampling.items()}
    assert rejected_field(validator, make_request(**fields)) == field


def test_prompt_plus_max_tokens_beyond_the_context_is_a_max_tokens_error(validator):
    request = make_request(kind=InputKind.TOKENS, token_ids=(7,) * 40, sampling_max_tokens=25)
    assert rejected_field(validator, request) == "sampling.max_tokens"


def test_boundary_values_are_accepted(validator):
    request = make_request(
        kind=InputKind.TOKENS,
        token_ids=(0, 49151),
        sampling_temperature=0.0,
        sampling_top_p=1.0,
        sampling_top_k=0,
        sampling_max_tokens=32,
        sampling_stop=("12345678", "x"),
        sampling_stop_token_ids=(0, 49151),
        model="smollm2",
        request_id="a" * 128,
    )
    validated = validator.validate(request, "a" * 128)
    assert validated.sampling.max_tokens == 32
    assert validated.sampling.stop_strings == ("12345678", "x")


# Regressions from the bad-input fuzz (tests/chaos/test_bad_input_fuzz.py): bytes protobuf
# rejects used to be named "sampling.stop" for any broken sampling field, "chat.messages" for
# a broken role or content, and "request" for a top-level field cut short.
@pytest.mark.parametrize(
    "data, field",
    [
        (b"\x1a\x03a\xff\xfe", "prompt"),  # invalid UTF-8
        (b"\x32\x02\x0d\x00", "sampling.temperature"),  # its fixed32 cut short
        (b"\x32\x03\x3a\x01\xff", "sampling.stop"),
        (b"\x2a\x02\x0a\x05", "tokens.token_ids"),  # packed ids cut short
        (b"\x0a\x05ab", "request_id"),  # 5 bytes declared, 2 sent
        (
            b"\x22\x10\x0a\x06\x0a\x04user\x0a\x06\x12\x02\xc3\x28\x0a\x00",
            "chat.messages[1].content",
        ),
        # A second `chat` merges into the first, so its message is the second one.
        (
            b"\x22\x06\x0a\x04\x0a\x02hi" + b"\x22\x06\x0a\x04\x0a\x02\xff\xfe",
            "chat.messages[1].role",
        ),
        (b"\x23\x23\x24\x24\x0a\x01\xff", "request_id"),  # groups are kept as unknown fields
        (b"\x0b" * 50_000, "request_id"),  # groups never closed: no recursion, no crash
        (b"\xff" * 12, "request"),  # not a tag at all
    ],
)
def test_undecodable_bytes_name_the_field_that_broke(data, field):
    assert decode_generate_request(data) == UndecodableRequest(field)
