"""One request's output: generated token ids in, client chunks (ids + text delta) out.

Tokens are taken one at a time so that a stop string ends the output at the exact token
that completed it. A stop token (EOS or a requested stop id) counts as generated but its
text is never output, as in vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.detokenizer import Decoder, IncrementalDetokenizer
from router.stops import StopStringMatcher


@dataclass(frozen=True, slots=True)
class OutputDelta:
    token_ids: tuple[int, ...]  # accepted tokens; those after a stop string are dropped
    text: str
    stop_string: str | None = None  # set when a stop string ended the output


class OutputStream:
    """Detokenizes and applies stop strings; `is_done` once a stop string matched."""

    def __init__(self, decoder: Decoder, stop_strings: Sequence[str]) -> None:
        self._detokenizer = IncrementalDetokenizer(decoder)
        self._stops = StopStringMatcher(stop_strings)
        self.num_tokens = 0  # generated tokens accepted so far, stop token included

    @property
    def is_done(self) -> bool:
        return self._stops.matched is not None

    def push(
        self, token_ids: Sequence[int], is_last: bool = False, stop_token_id: int | None = None
    ) -> OutputDelta:
        """Takes the next generated tokens; `is_last` releases all text still held back.

        `stop_token_id` names the final token when a stop token ended generation; its text
        is dropped.
        """
        accepted: list[int] = []
        text = ""
        for index, token_id in enumerate(token_ids):
            accepted.append(token_id)
            is_stop_token = is_last and index == len(token_ids) - 1 and token_id == stop_token_id
            if not is_stop_token:
                scan = self._stops.push(self._detokenizer.push((token_id,)))
                text += scan.text
                if scan.stop is not None:
                    break
        self.num_tokens += len(accepted)
        if is_last and not self.is_done:
            text += self._flush()
        return OutputDelta(tuple(accepted), text, self._stops.matched)

    def _flush(self) -> str:
        scan = self._stops.push(self._detokenizer.flush())
        return scan.text if scan.stop is not None else scan.text + self._stops.flush()
