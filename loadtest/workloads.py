"""Seeded, reproducible request generators: the same arguments give the same token prompts.

Prompts are token ids drawn from a `VocabRange` (sent as `TokenInput`), so no tokenizer is
needed and the prompt length is exact. Three shapes:
  random         input and output lengths each drawn from a `LengthDist` (fixed or uniform)
  shared-prefix  `num_groups` prefixes × `prompts_per_group` questions, shuffled so the groups
                 interleave (what prefix-aware routing and prefix caching are for)
  multi-turn     conversations whose turn k+1 is turn k's prompt + a stand-in answer of turn
                 k's output length + a new question; the answer is drawn, not the server's, so
                 the workload stays independent of what the server returns. Turns are ordered
                 round by round: every conversation's turn 0, then every turn 1, …
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass


class WorkloadKind(enum.StrEnum):
    RANDOM = "random"
    SHARED_PREFIX = "shared-prefix"
    MULTI_TURN = "multi-turn"


class DistKind(enum.StrEnum):
    FIXED = "fixed"
    UNIFORM = "uniform"


@dataclass(frozen=True, slots=True)
class LengthDist:
    """A token count: `low` always (fixed), or uniform over [low, high] inclusive."""

    kind: DistKind
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low < 1 or self.high < self.low:
            raise ValueError(f"lengths need 1 <= low <= high, got {self.low}..{self.high}")
        if self.kind is DistKind.FIXED and self.high != self.low:
            raise ValueError("a fixed length has low == high")

    @classmethod
    def fixed(cls, length: int) -> LengthDist:
        return cls(DistKind.FIXED, length, length)

    @classmethod
    def uniform(cls, low: int, high: int) -> LengthDist:
        return cls(DistKind.UNIFORM, low, high)

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """ "128" is fixed, "64:256" uniform over 64..256; ValueError otherwise."""
        low, sep, high = text.partition(":")
        try:
            return cls.uniform(int(low), int(high)) if sep else cls.fixed(int(low))
        except ValueError as exc:
            raise ValueError(f"length {text!r}: {exc}") from None

    def sample(self, rng: random.Random) -> int:
        return self.low if self.kind is DistKind.FIXED else rng.randint(self.low, self.high)


@dataclass(frozen=True, slots=True)
class VocabRange:
    """Token ids are drawn from [low, high); the default stays clear of SmolLM2's special ids."""

    low: int = 300
    high: int = 40_000

    def draw(self, rng: random.Random, length: int) -> list[int]:
        return [rng.randrange(self.low, self.high) for _ in range(length)]


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """One request to send. `group` is its prefix group or conversation (-1: none)."""

    index: int
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    group: int = -1
    turn: int = 0

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(frozen=True, slots=True)
class RandomShape:
    num_requests: int
    input_len: LengthDist
    output_len: LengthDist


@dataclass(frozen=True, slots=True)
class SharedPrefixShape:
    num_groups: int
    prompts_per_group: int
    prefix_len: int
    question_len: LengthDist
    output_len: LengthDist


@dataclass(frozen=True, slots=True)
class MultiTurnShape:
    num_conversations: int
    num_turns: int
    question_len: LengthDist
    output_len: LengthDist


WorkloadShape = RandomShape | SharedPrefixShape | MultiTurnShape


def make_requests(
    shape: WorkloadShape, seed: int, vocab: VocabRange = VocabRange()
) -> list[LoadRequest]:
    """The workload `shape` describes, drawn from `random.Random(seed)`."""
    rng = random.Random(seed)
    if isinstance(shape, RandomShape):
        return _random(shape, rng, vocab)
    if isinstance(shape, SharedPrefixShape):
        return _shared_prefix(shape, rng, vocab)
    return _multi_turn(shape, rng, vocab)


def _random(shape: RandomShape, rng: random.Random, vocab: VocabRange) -> list[LoadRequest]:
    requests = []
    for index in range(shape.num_requests):
        prompt = vocab.draw(rng, shape.input_len.sample(rng))
        requests.append(LoadRequest(index, tuple(prompt), shape.output_len.sample(rng)))
    return requests


def _shared_prefix(
    shape: SharedPrefixShape, rng: random.Random, vocab: VocabRange
) -> list[LoadRequest]:
    prefixes = [vocab.draw(rng, shape.prefix_len) for _ in range(shape.num_groups)]
    drawn = []
    for group, prefix in enumerate(prefixes):
        for _ in range(shape.prompts_per_group):
            question = vocab.draw(rng, shape.question_len.sample(rng))
            drawn.append((group, tuple(prefix + question), shape.output_len.sample(rng)))
    rng.shuffle(drawn)
    return [
        LoadRequest(index, prompt, max_tokens, group)
        for index, (group, prompt, max_tokens) in enumerate(drawn)
    ]


def _multi_turn(shape: MultiTurnShape, rng: random.Random, vocab: VocabRange) -> list[LoadRequest]:
    histories: list[list[int]] = [[] for _ in range(shape.num_conversations)]
    requests: list[LoadRequest] = []
    for turn in range(shape.num_turns):
        for conversation, history in enumerate(histories):
            history += vocab.draw(rng, shape.question_len.sample(rng))
            max_tokens = shape.output_len.sample(rng)
            requests.append(
                LoadRequest(len(requests), tuple(history), max_tokens, conversation, turn)
            )
            history += vocab.draw(rng, max_tokens)  # the stand-in answer
    return requests
