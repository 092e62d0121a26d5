"""Sampling: greedy, temperature, top-k, top-p and per-request seeds."""

from __future__ import annotations

import math

import torch

from engine.request import SamplingParams
from engine.sampler import filtered_probs, make_generator, sample

VOCAB = 50


def random_logits(num_rows: int, seed: int) -> torch.Tensor:
    return torch.randn(num_rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_per_row() -> None:
    """temperature 0 must be deterministic argmax, ignoring the generator."""
    logits = random_logits(4, seed=0)
    tokens = sample(logits, [SamplingParams()] * 4, [make_generator(1)] * 4)
    assert tokens == logits.argmax(dim=-1).tolist()


def test_top_k_one_is_greedy_even_at_high_temperature() -> None:
    """top_k=1 leaves one candidate, so no temperature can change the pick."""
    logits = random_logits(3, seed=1)
    params = [SamplingParams(temperature=100.0, top_k=1)] * 3
    for seed in range(5):
        tokens = sample(logits, params, [make_generator(seed + i) for i in range(3)])
        assert tokens == logits.argmax(dim=-1).tolist()


def test_seeded_request_ignores_its_batch_neighbours() -> None:
    """A seeded request must give the same tokens alone or batched with other requests."""
    logits = random_logits(3, seed=2)
    mine = SamplingParams(temperature=1.0, seed=42)
    params = [SamplingParams(temperature=0.7, top_p=0.9), mine, SamplingParams()]
    generators = [make_generator(7), make_generator(42), None]
    mine_alone = make_generator(42)
    alone, batched = [], []
    for _ in range(20):
        alone += sample(logits[1:2], [mine], [mine_alone])
        batched.append(sample(logits, params, generators)[1])
    assert batched == alone
    assert len(set(alone)) > 1  # really sampled, not a degenerate distribution


def test_same_seed_same_tokens() -> None:
    """Two requests with the same seed draw the same sequence."""
    logits = random_logits(1, seed=3)
    params = [SamplingParams(temperature=1.0, seed=5)]
    first, second = make_generator(5), make_generator(5)
    assert [sample(logits, params, [first]) for _ in range(10)] == [
        sample(logits, params, [second]) for _ in range(10)
    ]


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    """probs 0.5, 0.25, 0.125, 0.125: top_p=0.7 needs the first two (0.75 >= 0.7)."""
    logits = torch.tensor([[math.log(0.125), math.log(0.5), math.log(0.125), math.log(0.25)]])
    probs = filtered_probs(logits, [SamplingParams(temperature=1.0, top_p=0.7)])
    torch.testing.assert_close(probs, torch.tensor([[0.0, 0.5, 0.0, 0.25]]) / 0.75)


def test_top_p_exactly_reached_stops_there() -> None:
    """top_p=0.75 is reached by the first two tokens exactly: the third is not needed."""
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.125), math.log(0.125)]])
    probs = filtered_probs(logits, [SamplingParams(temperature=1.0, top_p=0.75)])
    assert probs[0].nonzero().flatten().tolist() == [0, 1]


def test_tiny_top_p_keeps_the_top_token() -> None:
    """A nucleus smaller than the top token still keeps that token."""
    logits = random_logits(1, seed=4)
    probs = filtered_probs(logits, [SamplingParams(temperature=1.0, top_p=1e-6)])
    assert probs[0].nonzero().flatten().tolist() == [int(logits.argmax())]


def test_top_k_keeps_k_most_likely() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    probs = filtered_probs(logits, [SamplingParams(temperature=1.0, top_k=3)])
    assert probs[0].nonzero().flatten().tolist() == [1, 2, 3]


def test_temperature_divides_logits() -> None:
    """Temperature T samples from softmax(logits / T)."""
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    probs = filtered_probs(logits, [SamplingParams(temperature=0.5)])
    torch.testing.assert_close(probs, torch.softmax(logits / 0.5, dim=-1))


def test_low_temperature_concentrates_samples() -> None:
    """As T shrinks the draws converge on the argmax; at T=1 they spread."""
    logits = torch.tensor([[0.0, 0.5, 1.0]])
    cold = SamplingParams(temperature=0.01)
    warm = SamplingParams(temperature=1.0)
    gen_cold, gen_warm = make_generator(0), make_generator(0)
    cold_tokens = {sample(logits, [cold], [gen_cold])[0] for _ in range(50)}
    warm_tokens = {sample(logits, [warm], [gen_warm])[0] for _ in range(50)}
    assert cold_tokens == {2}
    assert warm_tokens == {0, 1, 2}
