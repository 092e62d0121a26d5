"""The router's tokenizer equals Hugging Face's (transformers is imported here, in tests only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from router.tokenizer import ChatMessage, ChatTemplateError, Tokenizer

CONVERSATIONS = [
    [("user", "Hi")],
    [("system", "You are terse."), ("user", "Name a colour.")],
    [("user", "2+2?"), ("assistant", "4"), ("user", "And 3+3? 🦙 café")],
    [("assistant", "I start."), ("user", "")],
]


@pytest.fixture(scope="module")
def ours(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(smollm2_dir)


@pytest.fixture(scope="module")
def reference(smollm2_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_template_matches_transformers(ours, reference, conversation):
    messages = [{"role": role, "content": content} for role, content in conversation]
    expected_text = reference.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    expected_ids = reference(expected_text, add_special_tokens=False)["input_ids"]
    chat = [ChatMessage(role, content) for role, content in conversation]
    assert ours.render_chat(chat) == expected_text
    assert ours.apply_chat_template(chat) == expected_ids


@pytest.mark.parametrize("text", ["Hello world", " spaced  out ", "naïve 🦙\n<|im_end|>"])
def test_encode_matches_transformers(ours, reference, text):
    assert ours.encode(text) == reference(text)["input_ids"]


def test_eos_and_vocab_come_from_the_model_files(ours):
    assert ours.eos_token_ids == (2,)  # <|im_end|>
    assert ours.vocab_size == 49152


def test_template_raise_exception_becomes_chat_template_error(smollm2_dir):
    backend = HFTokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    tokenizer = Tokenizer(backend, template, {})
    with pytest.raises(ChatTemplateError, match="user first"):
        tokenizer.apply_chat_template([ChatMessage("assistant", "hi")])


def test_template_sees_bos_and_eos_tokens(smollm2_dir):
    backend = HFTokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    template = "{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"
    tokenizer = Tokenizer(backend, template, {"bos_token": "<s>", "eos_token": "</s>"})
    assert tokenizer.render_chat([ChatMessage("user", "x")]) == "<s>x</s>"


def test_a_model_without_template_cannot_render_chat(smollm2_dir):
    backend = HFTokenizer.from_file(str(smollm2_dir / "tokenizer.json"))
    with pytest.raises(ChatTemplateError):
        Tokenizer(backend, None, {}).apply_chat_template([ChatMessage("user", "x")])
