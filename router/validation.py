"""Validation of a generation request before any worker sees it.

`RequestValidator.validate` is pure (no I/O, no worker calls): it checks every field of a
`RawRequest` and tokenizes the prompt, returning a `ValidatedRequest` the rest of the
router trusts, or raising `InvalidArgument(field, reason)` naming the first bad field.
Cheap checks run before tokenization so that a malformed request costs almost nothing.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.config import ModelConfig
from router.config import RouterConfig
from router.errors import InvalidArgument
from router.tokenizer import ChatMessage, ChatTemplateError, Tokenizer

CHAT_ROLES = frozenset({"system", "user", "assistant"})
# Each message costs template markup and render time even when empty, so it counts this
# much against max_prompt_bytes on top of its content.
MESSAGE_OVERHEAD_BYTES = 16
_REQUEST_ID = re.compile(r"[\w.:@/+=~-]{1,128}", re.ASCII)


class InputKind(enum.Enum):
    NONE = "none"
    PROMPT = "prompt"
    CHAT = "chat"
    TOKENS = "tokens"


_INPUT_FIELD = {
    InputKind.NONE: "prompt",
    InputKind.PROMPT: "prompt",
    InputKind.CHAT: "chat.messages",
    InputKind.TOKENS: "tokens.token_ids",
}


@dataclass(frozen=True, slots=True)
class RawSampling:
    """SamplingParams as received; None = the client left the field unset."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class RawRequest:
    """GenerateRequest as received, before any check."""

    request_id: str = ""
    model: str = ""
    kind: InputKind = InputKind.NONE
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    token_ids: tuple[int, ...] = ()
    sampling: RawSampling = RawSampling()


@dataclass(frozen=True, slots=True)
class Sampling:
    """Checked sampling parameters; `max_tokens` already fits the context."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class ValidatedRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: Sampling

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    served_model: str
    max_context_len: int
    vocab_size: int
    max_tokens_default: int
    max_tokens_limit: int
    max_prompt_bytes: int
    max_stop_strings: int
    max_stop_len: int
    max_stop_token_ids: int

    @classmethod
    def from_config(cls, config: RouterConfig, model: ModelConfig) -> ValidationLimits:
        return cls(
            served_model=config.served_model,
            max_context_len=model.max_position_embeddings,
            vocab_size=model.vocab_size,
            max_tokens_default=config.max_tokens_default,
            max_tokens_limit=config.max_tokens_limit,
            max_prompt_bytes=config.max_prompt_bytes,
            max_stop_strings=config.max_stop_strings,
            max_stop_len=config.max_stop_len,
            max_stop_token_ids=config.max_stop_token_ids,
        )


def is_valid_request_id(request_id: str) -> bool:
    """Non-empty, at most 128 ASCII letters, digits or `_ . : @ / + = ~ -`."""
    return _REQUEST_ID.fullmatch(request_id) is not None


class RequestValidator:
    """Holds the limits and the tokenizer; `validate` may run on any thread."""

    def __init__(self, limits: ValidationLimits, tokenizer: Tokenizer) -> None:
        self._limits = limits
        self._tokenizer = tokenizer

    def validate(self, raw: RawRequest, request_id: str) -> ValidatedRequest:
        """Checks `raw` (whose own id, if any, is `request_id`); raises InvalidArgument."""
        self._check_identity(raw)
        self._check_sampling(raw.sampling)
        self._check_input_size(raw)
        prompt_ids = self._tokenize(raw)
        max_tokens = self._fit_max_tokens(raw, len(prompt_ids))
        return ValidatedRequest(request_id, tuple(prompt_ids), _sampling(raw.sampling, max_tokens))

    def _check_identity(self, raw: RawRequest) -> None:
        if raw.request_id and not is_valid_request_id(raw.request_id):
            raise InvalidArgument("request_id", "at most 128 characters from [A-Za-z0-9_.:@/+=~-]")
        if raw.model and raw.model != self._limits.served_model:
            raise InvalidArgument("model", f"this server serves {self._limits.served_model!r}")

    def _check_sampling(self, sampling: RawSampling) -> None:
        if sampling.temperature is not None and not (
            math.isfinite(sampling.temperature) and sampling.temperature >= 0
        ):
            raise InvalidArgument("sampling.temperature", "must be finite and >= 0")
        if sampling.top_p is not None and not 0 < sampling.top_p <= 1:  # NaN fails too
            raise InvalidArgument("sampling.top_p", "must be in (0, 1]")
        if sampling.top_k is not None and sampling.top_k < 0:
            raise InvalidArgument("sampling.top_k", "must be >= 0 (0 = disabled)")
        limit = self._limits.max_tokens_limit
        if sampling.max_tokens is not None and not 1 <= sampling.max_tokens <= limit:
            raise InvalidArgument("sampling.max_tokens", f"must be in [1, {limit}]")
        self._check_stop_strings(sampling.stop)
        self._check_token_ids("sampling.stop_token_ids", sampling.stop_token_ids)
        if len(sampling.stop_token_ids) > self._limits.max_stop_token_ids:
            raise InvalidArgument(
                "sampling.stop_token_ids", f"at most {self._limits.max_stop_token_ids} ids"
            )

    def _check_stop_strings(self, stops: Sequence[str]) -> None:
        limits = self._limits
        if len(stops) > limits.max_stop_strings:
            raise InvalidArgument("sampling.stop", f"at most {limits.max_stop_strings} strings")
        for index, stop in enumerate(stops):
            if not 1 <= len(stop) <= limits.max_stop_len:
                raise InvalidArgument(
                    "sampling.stop", f"[{index}]: length must be in [1, {limits.max_stop_len}]"
                )
            _check_utf8("sampling.stop", stop)

    def _check_token_ids(self, field: str, token_ids: Sequence[int]) -> None:
        vocab_size = self._limits.vocab_size
        if token_ids and not (0 <= min(token_ids) and max(token_ids) < vocab_size):
            raise InvalidArgument(field, f"token ids must be in [0, {vocab_size})")

    def _check_input_size(self, raw: RawRequest) -> None:
        field = _INPUT_FIELD[raw.kind]
        if raw.kind is InputKind.NONE or _is_empty(raw):
            raise InvalidArgument(field, "a non-empty prompt, chat or tokens input is required")
        if raw.kind is InputKind.CHAT:
            self._check_chat(raw.messages)
        elif raw.kind is InputKind.TOKENS:
            self._check_context(field, len(raw.token_ids))
            self._check_token_ids(field, raw.token_ids)
        elif len(_check_utf8(field, raw.prompt)) > self._limits.max_prompt_bytes:
            raise InvalidArgument(field, f"at most {self._limits.max_prompt_bytes} UTF-8 bytes")

    def _check_chat(self, messages: Sequence[ChatMessage]) -> None:
        num_bytes = 0
        for index, message in enumerate(messages):
            if message.role not in CHAT_ROLES:
                raise InvalidArgument(
                    f"chat.messages[{index}].role", f"must be one of {sorted(CHAT_ROLES)}"
                )
            content = _check_utf8(f"chat.messages[{index}].content", message.content)
            num_bytes += len(content) + MESSAGE_OVERHEAD_BYTES
        if num_bytes > self._limits.max_prompt_bytes:
            raise InvalidArgument(
                "chat.messages", f"content at most {self._limits.max_prompt_bytes} UTF-8 bytes"
            )

    def _tokenize(self, raw: RawRequest) -> list[int]:
        if raw.kind is InputKind.TOKENS:
            return list(raw.token_ids)
        if raw.kind is InputKind.PROMPT:
            return self._tokenizer.encode(raw.prompt)
        try:
            return self._tokenizer.apply_chat_template(raw.messages)
        except ChatTemplateError as exc:
            raise InvalidArgument("chat.messages", str(exc)) from exc

    def _fit_max_tokens(self, raw: RawRequest, prompt_len: int) -> int:
        """The request's max_tokens, or the default clipped to the room left in the context."""
        field = _INPUT_FIELD[raw.kind]
        self._check_context(field, prompt_len)
        room = self._limits.max_context_len - prompt_len
        requested = raw.sampling.max_tokens
        if requested is None:
            return min(self._limits.max_tokens_default, room)
        if requested > room:
            raise InvalidArgument(
                "sampling.max_tokens",
                f"prompt ({prompt_len} tokens) + max_tokens ({requested}) exceeds the "
                f"context of {self._limits.max_context_len}",
            )
        return requested

    def _check_context(self, field: str, prompt_len: int) -> None:
        # A prompt must leave room for at least one generated token.
        if prompt_len >= self._limits.max_context_len:
            raise InvalidArgument(
                field,
                f"{prompt_len} tokens; the model's context is {self._limits.max_context_len}",
            )


def _is_empty(raw: RawRequest) -> bool:
    inputs = {InputKind.PROMPT: raw.prompt, InputKind.CHAT: raw.messages}
    return not inputs.get(raw.kind, raw.token_ids)


def _check_utf8(field: str, text: str) -> bytes:
    """The UTF-8 bytes of `text`; a lone surrogate is an InvalidArgument, not a crash."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(field, "not valid UTF-8") from exc


def _sampling(raw: RawSampling, max_tokens: int) -> Sampling:
    return Sampling(
        max_tokens=max_tokens,
        temperature=0.0 if raw.temperature is None else raw.temperature,
        top_p=1.0 if raw.top_p is None else raw.top_p,
        top_k=raw.top_k or 0,
        seed=raw.seed,
        stop_token_ids=raw.stop_token_ids,
        stop_strings=raw.stop,
        ignore_eos=raw.ignore_eos,
    )
