"""Stop strings across arbitrary chunk boundaries, and the per-token output stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.output import OutputStream
from router.stops import StopStringMatcher
from router.tokenizer import Tokenizer


def feed(matcher: StopStringMatcher, chunks: list[str]) -> tuple[list[str], str | None]:
    released = []
    for chunk in chunks:
        scan = matcher.push(chunk)
        released.append(scan.text)
        if scan.stop is not None:
            return released, scan.stop
    released.append(matcher.flush())
    return released, None


def test_text_without_stop_strings_passes_through_unchanged():
    assert feed(StopStringMatcher([]), ["ab", "cd"]) == (["ab", "cd", ""], None)


def test_a_stop_string_split_across_chunks_is_found_and_cut():
    released, stop = feed(StopStringMatcher(["END"]), ["hello E", "N", "D and more"])
    assert released == ["hello ", "", ""]
    assert stop == "END"


def test_a_partial_match_is_held_then_released_when_it_breaks():
    released, stop = feed(StopStringMatcher(["END"]), ["say EN", "Ough"])
    assert released == ["say ", "ENOugh", ""]
    assert stop is None


def test_held_text_is_released_at_the_end_of_the_stream():
    released, stop = feed(StopStringMatcher(["###"]), ["done #", "#"])
    assert released == ["done ", "", "##"]
    assert stop is None


def test_the_earliest_starting_stop_string_wins():
    # Only completed matches count: "abcde" would start earlier but never completes.
    assert feed(StopStringMatcher(["abcde", "bcd"]), ["xabc", "dz"]) == (["x", "a"], "bcd")
    assert feed(StopStringMatcher(["cd", "abcd"]), ["ab", "cd!"]) == (["", ""], "abcd")


def test_overlapping_candidates_hold_back_the_longest_possible_start():
    matcher = StopStringMatcher(["aab", "ab"])
    assert matcher.push("xaa").text == "x"  # "aa" may start "aab"
    scan = matcher.push("b")
    assert (scan.text, scan.stop) == ("", "aab")


def test_nothing_is_released_after_a_match():
    matcher = StopStringMatcher(["."])
    assert matcher.push("one. two").text == "one"
    assert matcher.push("three").text == ""
    assert matcher.flush() == ""


def test_empty_stop_strings_are_refused():
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(smollm2_dir)


def test_output_stops_at_the_token_that_completes_the_stop_string(tokenizer):
    token_ids = tokenizer.encode("The answer is 42. Then more text follows.")
    stream = OutputStream(tokenizer, ["42."])
    delta = stream.push(token_ids)
    assert delta.text == "The answer is "
    assert delta.stop_string == "42."
    assert tokenizer.decode(delta.token_ids).endswith("42.")  # later tokens are dropped
    assert stream.num_tokens == len(delta.token_ids) < len(token_ids)
    assert stream.is_done


def test_stop_token_counts_but_adds_no_text(tokenizer):
    token_ids = tokenizer.encode("Short reply") + [2]
    stream = OutputStream(tokenizer, [])
    delta = stream.push(token_ids, is_last=True, stop_token_id=2)
    assert (delta.text, delta.token_ids, stream.num_tokens) == ("Short reply", tuple(token_ids), 3)


def test_last_push_flushes_text_held_for_a_stop_string(tokenizer):
    stream = OutputStream(tokenizer, ["reply!"])
    first = stream.push(tokenizer.encode("Short"))
    last = stream.push(tokenizer.encode(" reply"), is_last=True)
    assert (first.text, last.text, last.stop_string) == ("Short", " reply", None)
