"""Incremental detokenization with SmolLM2's real tokenizer: deltas add up to the full decode."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.detokenizer import IncrementalDetokenizer
from router.tokenizer import Tokenizer

TEXTS = [
    "Hello world, this is plain ASCII.",
    "Größe, naïve café — déjà vu.",
    "日本語のテキストと中文字符",
    "Emoji 🦙🚀 and flags 🇫🇷 with a family 👨‍👩‍👧 in it",
    "  leading spaces,\ttabs\nand newlines\n\n",
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(smollm2_dir)


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_concatenate_to_the_full_decode(tokenizer, text):
    token_ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push([token_id]) for token_id in token_ids]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == tokenizer.decode(token_ids) == text


@pytest.mark.parametrize("chunk_len", [2, 3, 7])
def test_multi_token_chunks_concatenate_to_the_full_decode(tokenizer, chunk_len):
    token_ids = tokenizer.encode(" ".join(TEXTS))
    detokenizer = IncrementalDetokenizer(tokenizer)
    chunks = [token_ids[i : i + chunk_len] for i in range(0, len(token_ids), chunk_len)]
    text = "".join(detokenizer.push(chunk) for chunk in chunks) + detokenizer.flush()
    assert text == tokenizer.decode(token_ids)


def test_an_incomplete_character_is_held_back_until_its_last_byte(tokenizer):
    # The llama emoji is several byte-level tokens; none but the last completes it.
    token_ids = tokenizer.encode("🦙")
    assert len(token_ids) > 1
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.push([token_id]) for token_id in token_ids]
    assert deltas == [""] * (len(token_ids) - 1) + ["🦙"]
    assert detokenizer.flush() == ""


def test_arbitrary_token_ids_still_concatenate_to_the_full_decode(tokenizer):
    # Mock-worker-like ids: byte tokens in any order, incomplete characters included.
    token_ids = [(12345 * 31 + i * 7919) % 49152 for i in range(300)] + [216, 132]
    detokenizer = IncrementalDetokenizer(tokenizer)
    text = "".join(detokenizer.push([t]) for t in token_ids) + detokenizer.flush()
    assert text == tokenizer.decode(token_ids)
    assert text.endswith("\ufffd")  # the trailing lone lead byte is flushed as U+FFFD


def test_special_tokens_add_no_text(tokenizer):
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push(tokenizer.encode("Hi")) == "Hi"
    assert detokenizer.push([2]) == ""  # <|im_end|>
    assert detokenizer.push(tokenizer.encode(" there")) == " there"
