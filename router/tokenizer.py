"""Tokenization for the router without transformers: `tokenizers` plus a jinja2 chat template.

Matches Hugging Face: `encode(text)` equals `AutoTokenizer(text)["input_ids"]` (the
tokenizer.json post-processor adds whatever special tokens the model wants, none for
SmolLM2), and `apply_chat_template(messages)` equals
`apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`, which renders
the template to text and encodes it without adding special tokens (the template has them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


class ChatTemplateError(ValueError):
    """The template rejected the conversation (e.g. its `raise_exception`); message is safe."""


class Tokenizer:
    """A model's tokenizer and chat template. Thread-safe for encode/decode after load."""

    def __init__(
        self, backend: HFTokenizer, chat_template: str | None, special_tokens: dict[str, str]
    ) -> None:
        self._backend = backend
        self._template = _compile(chat_template) if chat_template else None
        self._special_tokens = special_tokens

    @classmethod
    def from_dir(cls, model_dir: Path) -> Tokenizer:
        """Loads tokenizer.json and (if present) tokenizer_config.json from `model_dir`."""
        backend = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        return cls(backend, _template_source(config), _special_tokens(config))

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer knows, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The id of tokenizer_config's `eos_token`, if it names a known token."""
        eos_id = self.token_to_id(self._special_tokens.get("eos_token", ""))
        return () if eos_id is None else (eos_id,)

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token) if token else None

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=True).ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The template's text for `messages` plus the assistant generation prompt.

        Raises ChatTemplateError when the model has no template or the template rejects
        the conversation.
        """
        if self._template is None:
            raise ChatTemplateError("this model has no chat template")
        plain = [{"role": m.role, "content": m.content} for m in messages]
        try:
            return self._template.render(
                messages=plain, add_generation_prompt=True, **self._special_tokens
            )
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(str(exc)) from exc

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of `render_chat(messages)`; raises ChatTemplateError like it."""
        rendered = self.render_chat(messages)
        return self._backend.encode(rendered, add_special_tokens=False).ids


def _compile(source: str) -> jinja2.Template:
    # The environment transformers uses, so that templates render byte for byte the same.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    # jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, **kw)


def _template_source(config: dict[str, Any]) -> str | None:
    """tokenizer_config's `chat_template`: a string, or a list of named templates."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {entry["name"]: entry["template"] for entry in template}
        return named.get("default")
    return template


def _special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """`bos_token`, `eos_token`, … as strings (they may be stored as AddedToken dicts)."""
    tokens: dict[str, str] = {}
    for key, value in config.items():
        if key.endswith("_token") and isinstance(value, dict):
            value = value.get("content")
        if key.endswith("_token") and isinstance(value, str):
            tokens[key] = value
    return tokens
