"""Hypothesis strategies for malformed Generate calls (RELIABILITY.md "Bad input").

The strategies here (and in wire_defects.py) draw an otherwise valid random GenerateRequest and gives it exactly one
defect, as the wire bytes a client sends, tagged with the field path the rejection must name:

| category                | defects                                                        |
|-------------------------|----------------------------------------------------------------|
| sampling values         | temperature / top_p NaN, ±inf, out of range; top_k < 0;        |
|                         | max_tokens <= 0, huge, or beyond the context left by the prompt|
| stop lists              | too many (huge) stop strings or stop ids; empty or long        |
|                         | strings; stop ids negative or outside the vocabulary           |
| prompt / chat / tokens  | missing or empty input; oversized text or chat; more tokens    |
|                         | than the context; unknown chat roles; token ids out of vocab   |
| identity                | wrong model name; request ids too long or with bad characters  |
| invalid UTF-8           | in request_id, model, prompt, a chat role or content, a stop   |
| broken protobuf         | a field cut short (top level or inside sampling); garbage      |
| oversized message       | beyond the router's gRPC cap: gRPC's own RESOURCE_EXHAUSTED    |

The router runs with FUZZ_ROUTER_CONFIG (small byte caps, so oversized inputs stay cheap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import strategies as st

from pdserve.v1 import generation_pb2 as pb

VOCAB_SIZE = 49152  # SmolLM2's
MAX_CONTEXT_LEN = 8192
MAX_PROMPT_BYTES = 32 * 1024
GRPC_MAX_MESSAGE_BYTES = 128 * 1024
MAX_TOKENS_LIMIT = 4096
MAX_STOP_STRINGS, MAX_STOP_LEN, MAX_STOP_TOKEN_IDS = 16, 256, 64
FUZZ_ROUTER_CONFIG = {
    "max_prompt_bytes": MAX_PROMPT_BYTES,
    "grpc_max_message_bytes": GRPC_MAX_MESSAGE_BYTES,
    "max_tokens_limit": MAX_TOKENS_LIMIT,
    "max_stop_strings": MAX_STOP_STRINGS,
    "max_stop_len": MAX_STOP_LEN,
    "max_stop_token_ids": MAX_STOP_TOKEN_IDS,
}
ROLES = ("system", "user", "assistant")
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@/+=~-"
DENSE_CHAR = "\u2603"  # 3 UTF-8 bytes, 3 SmolLM2 tokens: reaches the context in few bytes


@dataclass(frozen=True, slots=True)
class BadRequest:
    """One malformed Generate call: its bytes and what its rejection must say."""

    defect: str  # e.g. "sampling.temperature=nan"
    payload: bytes
    fields: frozenset[str]  # field paths the rejection may name; empty = any real field
    request_id: str = ""  # the id the rejection must quote; "" = one the router assigned
    oversized: bool = False  # beyond the gRPC cap: RESOURCE_EXHAUSTED from gRPC itself

    def describe(self) -> str:
        return f"{self.defect} ({len(self.payload)} bytes: {self.payload[:48].hex()}…)"


def bad(defect: str, message: pb.GenerateRequest | bytes, *fields: str) -> BadRequest:
    if isinstance(message, bytes):
        return BadRequest(defect, message, frozenset(fields))
    payload = message.SerializeToString()
    return BadRequest(defect, payload, frozenset(fields), message.request_id)


# ---- otherwise valid requests --------------------------------------------------------------

characters = st.characters(exclude_categories=("Cs",))  # lone surrogates cannot be encoded
texts = st.text(characters, min_size=1, max_size=24)
request_ids = st.text(ID_ALPHABET, min_size=1, max_size=32)
token_ids = st.integers(0, VOCAB_SIZE - 1)


@st.composite
def valid_sampling(draw) -> pb.SamplingParams:
    sampling = pb.SamplingParams(
        stop=draw(st.lists(st.text(characters, min_size=1, max_size=8), max_size=3)),
        stop_token_ids=draw(st.lists(token_ids, max_size=3)),
        ignore_eos=draw(st.booleans()),
    )
    optional = {
        "temperature": st.floats(0, 2, width=32),
        "top_p": st.floats(0, 1, exclude_min=True, width=32),
        "top_k": st.integers(0, 1000),
        "seed": st.integers(0, 2**64 - 1),
        "max_tokens": st.integers(1, 64),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            setattr(sampling, name, draw(values))
    return sampling


@st.composite
def valid_request(draw) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        request_id=draw(st.just("") | request_ids),
        model=draw(st.sampled_from(["", "smollm2-135m"])),
        sampling=draw(valid_sampling()),
    )
    kind = draw(st.sampled_from(["prompt", "chat", "tokens"]))
    if kind == "prompt":
        request.prompt = draw(texts)
    elif kind == "chat":
        request.chat.CopyFrom(draw(valid_chat()))
    else:
        request.tokens.token_ids.extend(draw(st.lists(token_ids, min_size=1, max_size=32)))
    return request


@st.composite
def valid_chat(draw) -> pb.ChatInput:
    messages = draw(st.lists(st.tuples(st.sampled_from(ROLES), texts), min_size=1, max_size=4))
    return pb.ChatInput(messages=[pb.ChatMessage(role=r, content=c) for r, c in messages])


def pattern_ids(seed: int, num_ids: int) -> list[int]:
    """`num_ids` in-vocabulary token ids (long prompts cost one draw, not thousands)."""
    return [(seed + i * 7919) % VOCAB_SIZE for i in range(num_ids)]


# ---- one defect per request, on a decodable message ------------------------------------------

non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
BAD_SAMPLING = {
    "temperature": non_finite | st.floats(max_value=-(2.0**-149), allow_infinity=False, width=32),
    "top_p": non_finite
    | st.floats(max_value=0, width=32)
    | st.floats(min_value=1, exclude_min=True, width=32),
    "top_k": st.integers(-(2**31), -1),
    "max_tokens": st.integers(-(2**31), 0) | st.integers(MAX_TOKENS_LIMIT + 1, 2**31 - 1),
}


@st.composite
def bad_sampling_value(draw) -> BadRequest:
    request = draw(valid_request())
    name = draw(st.sampled_from(sorted(BAD_SAMPLING)))
    value = draw(BAD_SAMPLING[name])
    setattr(request.sampling, name, value)
    return bad(f"sampling.{name}={value!r}", request, f"sampling.{name}")


@st.composite
def max_tokens_beyond_context(draw) -> BadRequest:
    request = draw(valid_request())
    prompt_len = draw(st.integers(MAX_CONTEXT_LEN - MAX_TOKENS_LIMIT + 1, MAX_CONTEXT_LEN - 1))
    _tokens_of(request, pattern_ids(draw(token_ids), prompt_len))
    request.sampling.max_tokens = draw(
        st.integers(MAX_CONTEXT_LEN - prompt_len + 1, MAX_TOKENS_LIMIT)
    )
    return bad("prompt + max_tokens > context", request, "sampling.max_tokens")


@st.composite
def bad_stop_strings(draw) -> BadRequest:
    request = draw(valid_request())
    stops, defect = list(request.sampling.stop), draw(st.sampled_from(["many", "empty", "long"]))
    if defect == "many":  # huge stop lists
        stops = [draw(st.text(characters, min_size=1, max_size=4))] * draw(
            st.integers(MAX_STOP_STRINGS + 1, 10_000)
        )
    else:
        stop = (
            ""
            if defect == "empty"
            else draw(characters) * draw(st.integers(MAX_STOP_LEN + 1, 2000))
        )
        stops.insert(draw(st.integers(0, len(stops))), stop)
    request.sampling.ClearField("stop")
    request.sampling.stop.extend(stops)
    return bad(f"sampling.stop: {defect} ({len(stops)})", request, "sampling.stop")


@st.composite
def bad_stop_token_ids(draw) -> BadRequest:
    request = draw(valid_request())
    ids, defect = list(request.sampling.stop_token_ids), draw(st.sampled_from(["many", "vocab"]))
    if defect == "many":
        ids = pattern_ids(draw(token_ids), draw(st.integers(MAX_STOP_TOKEN_IDS + 1, 10_000)))
    else:
        ids.insert(draw(st.integers(0, len(ids))), draw(out_of_vocab))
    request.sampling.ClearField("stop_token_ids")
    request.sampling.stop_token_ids.extend(ids)
    return bad(f"sampling.stop_token_ids: {defect}", request, "sampling.stop_token_ids")


out_of_vocab = st.integers(-(2**31), -1) | st.integers(VOCAB_SIZE, 2**31 - 1)


@st.composite
def bad_input(draw) -> BadRequest:
    """Missing, empty, oversized or beyond-the-context prompt, chat or tokens."""
    request = draw(valid_request())
    defect = draw(st.sampled_from(sorted(INPUT_DEFECTS)))
    field = INPUT_DEFECTS[defect](draw, request)
    return bad(f"input: {defect}", request, field)


def _oversized_text(draw, fixed_bytes: int = 0) -> str:
    char = draw(characters)
    limit = (MAX_PROMPT_BYTES - fixed_bytes) // len(char.encode())
    return char * draw(st.integers(limit + 1, 3 * MAX_PROMPT_BYTES // len(char.encode())))


def _dense_text(draw) -> str:
    return DENSE_CHAR * draw(st.integers(MAX_CONTEXT_LEN // 3 + 1, MAX_CONTEXT_LEN // 3 + 300))


def _chat_of(request: pb.GenerateRequest, *contents: str) -> str:
    request.ClearField("input")
    request.chat.SetInParent()  # sets the oneof even with no messages
    request.chat.messages.extend(pb.ChatMessage(role="user", content=c) for c in contents)
    return "chat.messages"


def _tokens_of(request: pb.GenerateRequest, ids: list[int]) -> str:
    request.ClearField("input")
    request.tokens.SetInParent()  # sets the oneof even with no ids
    request.tokens.token_ids.extend(ids)
    return "tokens.token_ids"


def _bad_role(draw, request: pb.GenerateRequest) -> str:
    chat = draw(valid_chat())
    index = draw(st.integers(0, len(chat.messages) - 1))
    role = draw(st.sampled_from(["", "User", "SYSTEM", " user", "tool", "function"]) | texts)
    chat.messages[index].role = role if role not in ROLES else role + "!"
    request.chat.CopyFrom(chat)
    return f"chat.messages[{index}].role"


def _bad_token_id(draw, request: pb.GenerateRequest) -> str:
    ids = draw(st.lists(token_ids, max_size=16))
    ids.insert(draw(st.integers(0, len(ids))), draw(out_of_vocab))
    return _tokens_of(request, ids)


def _set(request: pb.GenerateRequest, **fields: object) -> None:
    request.ClearField("input")
    for name, value in fields.items():
        setattr(request, name, value)


INPUT_DEFECTS = {
    "missing": lambda draw, r: (r.ClearField("input"), "prompt")[1],
    "empty prompt": lambda draw, r: (_set(r, prompt=""), "prompt")[1],
    "empty chat": lambda draw, r: _chat_of(r),
    "empty tokens": lambda draw, r: _tokens_of(r, []),
    "oversized prompt": lambda draw, r: (_set(r, prompt=_oversized_text(draw)), "prompt")[1],
    "prompt beyond context": lambda draw, r: (_set(r, prompt=_dense_text(draw)), "prompt")[1],
    "oversized chat": lambda draw, r: _chat_of(r, _oversized_text(draw)),
    "chat beyond context": lambda draw, r: _chat_of(r, _dense_text(draw)),
    "chat role": _bad_role,
    "token id out of vocab": _bad_token_id,
    "tokens beyond context": lambda draw, r: _tokens_of(
        r, pattern_ids(draw(token_ids), draw(st.integers(MAX_CONTEXT_LEN, MAX_CONTEXT_LEN + 4000)))
    ),
}


@st.composite
def bad_identity(draw) -> BadRequest:
    request = draw(valid_request())
    defect = draw(st.sampled_from(["model", "long id", "id characters"]))
    if defect == "model":
        request.model = draw(texts.filter(lambda name: name != "smollm2-135m"))
        return bad("model: not served", request, "model")
    if defect == "long id":
        request.request_id = draw(st.text(ID_ALPHABET, min_size=129, max_size=1000))
    else:
        valid = draw(request_ids)
        stray = draw(characters.filter(lambda c: c not in ID_ALPHABET))
        request.request_id = valid[: len(valid) // 2] + stray + valid[len(valid) // 2 :]
    return bad(f"request_id: {defect}", request.SerializeToString(), "request_id")
