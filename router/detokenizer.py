"""Incremental detokenization of a token stream (vLLM's prefix/read offsets).

A token may end in the middle of a UTF-8 character (byte-level BPE) and a word piece's
leading space depends on what precedes it (SentencePiece), so a token cannot be decoded
alone. Each step decodes a short window instead:

    ids:   [ ... already emitted ... | prefix_offset ... read_offset | new tokens ]
    delta = decode(ids[prefix_offset:]) - decode(ids[prefix_offset:read_offset])

and emits nothing while the window's text ends in U+FFFD (an incomplete character).

Contract: the concatenation of every `push` delta and the final `flush` equals
`tokenizer.decode(all ids pushed)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """One request's output text. Owns its token list; not shared between requests."""

    def __init__(self, decoder: Decoder) -> None:
        self._decoder = decoder
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the context window re-decoded each step
        self._read_offset = 0  # end of the ids whose text has been emitted

    @property
    def num_tokens(self) -> int:
        return len(self._ids)

    def push(self, token_ids: Sequence[int]) -> str:
        """Appends `token_ids` and returns the text they complete (possibly "")."""
        self._ids.extend(token_ids)
        emitted, window = self._decode_window()
        if len(window) <= len(emitted) or window.endswith(REPLACEMENT_CHAR):
            return ""
        self._advance()
        return window[len(emitted) :]

    def flush(self) -> str:
        """Returns whatever text is still held back (even an incomplete character)."""
        emitted, window = self._decode_window()
        self._advance()
        return window[len(emitted) :]

    def _decode_window(self) -> tuple[str, str]:
        emitted = self._decoder.decode(self._ids[self._prefix_offset : self._read_offset])
        window = self._decoder.decode(self._ids[self._prefix_offset :])
        return emitted, window

    def _advance(self) -> None:
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
